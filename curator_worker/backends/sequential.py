"""The ``sequential`` backend: every index in this process, in order."""

from __future__ import annotations

import os

from curator_worker.atomic import temp_path_for
from curator_worker.batch import IndexResult, error_record, execute_batch, flush_to, output_path_of
from curator_worker.metrics import record_of, safe_record, stage_names
from curator_worker.pipeline import Pipeline
from curator_worker.progress import ProgressReporter
from curator_worker.run import RunBackend, RunConfig, register_backend


@register_backend
class SequentialBackend(RunBackend):
    """Runs indices one after another in the calling process.

    An exception in an index propagates at once, as in physicsnemo-curator. Stateful
    filters work on private copies (running the same pipeline twice never double-counts)
    and are flushed straight to their final outputs, atomically. With ``track_metrics``
    every index is timed per stage and recorded, the failing one included.
    """

    name = "sequential"
    description = "One index after another in this process (debugging, small runs)."

    def run(self, pipeline: Pipeline, config: RunConfig) -> list[list[str]]:
        """Run ``config.indices`` in order; return their sink paths."""
        indices = list(range(len(pipeline))) if config.indices is None else config.indices
        tracked = pipeline.track_metrics
        names = stage_names(pipeline) if tracked else {}
        finished: list[IndexResult] = []
        current: list[int] = []
        with ProgressReporter(len(indices), config.progress) as progress:

            def advance(result: IndexResult) -> None:
                finished.append(result)
                progress.update(len(finished))

            try:
                outcome = execute_batch(
                    pipeline, indices, on_error="raise", on_index=advance,
                    on_start=current.append if tracked else None,
                    timings="all" if tracked else False,
                    trace_memory=tracked and pipeline.track_memory,
                )
            except Exception as exc:
                if tracked and current:
                    finished.append(IndexResult(current[-1], error=error_record(exc)))
                raise
            finally:
                if tracked:
                    safe_record(pipeline, [record_of(r, names) for r in finished])
            progress.update(len(finished), force=True)
        for n in outcome.stateful_positions:
            final = output_path_of(pipeline.filters[n])
            os.makedirs(os.path.dirname(os.path.abspath(final)), exist_ok=True)
            written = flush_to(outcome.filters[n], str(temp_path_for(final)))
            if written is not None:
                os.replace(written, final)
        return [list(r.paths or []) for r in outcome.results]
