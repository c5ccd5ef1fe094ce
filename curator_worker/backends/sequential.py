"""The ``sequential`` backend: every index in this process, in order."""

from __future__ import annotations

import os

from curator_worker.atomic import temp_path_for
from curator_worker.batch import execute_batch, flush_to, output_path_of
from curator_worker.pipeline import Pipeline
from curator_worker.progress import ProgressReporter
from curator_worker.run import RunBackend, RunConfig, register_backend


@register_backend
class SequentialBackend(RunBackend):
    """Runs indices one after another in the calling process.

    An exception in an index propagates at once, as in physicsnemo-curator. Stateful
    filters work on private copies (running the same pipeline twice never double-counts)
    and are flushed straight to their final outputs, atomically.
    """

    name = "sequential"
    description = "One index after another in this process (debugging, small runs)."

    def run(self, pipeline: Pipeline, config: RunConfig) -> list[list[str]]:
        """Run ``config.indices`` in order; return their sink paths."""
        with ProgressReporter(len(config.indices), config.progress) as progress:
            done = 0

            def advance(_: object) -> None:
                nonlocal done
                done += 1
                progress.update(done)

            outcome = execute_batch(
                pipeline, config.indices, on_error="raise", on_index=advance
            )
            progress.update(done, force=True)
        for n in outcome.stateful_positions:
            final = output_path_of(pipeline.filters[n])
            os.makedirs(os.path.dirname(os.path.abspath(final)), exist_ok=True)
            written = flush_to(outcome.filters[n], str(temp_path_for(final)))
            if written is not None:
                os.replace(written, final)
        return [list(r.paths or []) for r in outcome.results]
