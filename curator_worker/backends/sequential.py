"""The ``sequential`` backend: every index in this process, in order."""

from __future__ import annotations

import uuid

from curator_worker.backends.local import parse_options
from curator_worker.backends.run_result import RunResult
from curator_worker.batch import execute_batch
from curator_worker.contract.pipeline import Pipeline
from curator_worker.errors import index_failed
from curator_worker.metrics import safe_record_results, stage_names
from curator_worker.outcome import IndexResult, error_record
from curator_worker.progress import ProgressReporter
from curator_worker.run import RunBackend, RunConfig, register_backend
from curator_worker.shards import flush_final, output_path_of


@register_backend
class SequentialBackend(RunBackend):
    """Runs indices one after another in the calling process.

    An exception in an index propagates at once, as in physicsnemo-curator, naming the
    index (``on_error="collect"`` runs every index and returns the failures instead). Stateful
    filters work on private copies (running the same pipeline twice never double-counts)
    and are flushed straight to their final outputs, atomically. With ``track_metrics``
    every index is timed per stage and recorded, the failing one included.
    """

    name = "sequential"
    description = "One index after another in this process (debugging, small runs)."
    #: The only option: ``on_error`` ("raise" or "collect", as on the local backends).
    options = frozenset({"on_error"})

    def run(self, pipeline: Pipeline, config: RunConfig) -> list[list[str]]:
        """Run ``config.indices`` in order; return their sink paths.

        With ``on_error="collect"`` every index runs and a
        :class:`~curator_worker.backends.local.RunResult` is returned (failed entries
        ``[]``, their errors in ``failures`` / ``errors``); by default the first failing
        index raises (:class:`~curator_worker.errors.IndexFailedError`, chained to the
        original exception and also an instance of its type).
        """
        options = parse_options(self.name, config.backend_options, self.options,
                                common=frozenset())
        collect = options.on_error == "collect"
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
                    pipeline, indices, on_error="record" if collect else "raise",
                    on_index=advance, on_start=current.append,
                    timings="all" if tracked else False,
                    trace_memory=tracked and pipeline.track_memory,
                )
            except Exception as exc:
                if tracked and current:
                    finished.append(IndexResult(current[-1], error=error_record(exc)))
                if not current:
                    raise
                raise index_failed(exc, current[-1], self.name) from exc
            finally:
                if tracked:
                    safe_record_results(pipeline, finished, names)
            progress.update(len(finished), force=True)
        for n in outcome.stateful_positions:
            flush_final(outcome.filters[n], output_path_of(pipeline.filters[n]))
        paths = [list(r.paths or []) for r in outcome.results]
        if not collect:
            return paths
        errors = {r.index: r.error for r in outcome.results if r.error is not None}
        return RunResult(paths, run_id=f"{self.name}-{uuid.uuid4().hex}", errors=errors)
