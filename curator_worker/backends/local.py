"""What the local parallel backends (``thread``, ``process_pool``, ``loky``, ``dask``) share.

Every local parallel run goes the same way, whatever dispatches the work:

1. **Plan.** The run's indices are grouped with :meth:`Pipeline.partition_groups` (source
   and sink partitions intersected; a group is never split) and packed into batches with
   :func:`~curator_worker.contract.planning.pack_groups`.
2. **Run batches.** Each batch runs in a worker through
   :func:`~curator_worker.batch.execute_batch` with private copies of the stateful filters
   (a failed index is rolled back, the batch goes on), then flushes each stateful filter to
   a shard named ``<output>.shards/<run id>/<batch key>.<host>-<pid>-<token>.shard``. The run
   id is a fresh uuid, so two hosts, containers or runs can never collide (not by PID alone).
   For a URL output (``s3://…``) the shard is an object under the same name, uploaded in
   one write; the merged output is written in one write too.
3. **Gather.** At the end the parent merges each stateful filter's shards, in batch order,
   with the filter's ``merge`` into its final output (atomically) and removes the shard
   folders. With the backend option ``gather=False`` the shards are left for a
   physicsnemo-style :func:`~curator_worker.gather.gather_pipeline` call.
4. **Report.** Results come back in the caller's index order. Failed indices are raised at
   the end as one :class:`~curator_worker.errors.JobFailedError` listing every failed index,
   or, with ``on_error="collect"``, returned in a :class:`RunResult`.

Options every local parallel backend accepts (``run_pipeline(..., **options)``):

``batch_size`` : int, optional
    Indices per batch (default: about four batches per worker, see
    :func:`~curator_worker.contract.planning.auto_batch_size`). ``1`` gives per-index tasks.
``gather`` : bool, default True
    Merge stateful filters' shards at the end of the run.
``on_error`` : {"raise", "collect"}, default "raise"
    ``raise``: after the run (and its gather), raise ``JobFailedError(run_id, "partial",
    {index: "Type: message"})``. ``collect``: return a :class:`RunResult` whose failed
    entries are ``[]`` and whose ``failures`` / ``errors`` describe them.

Unknown options raise ``TypeError``. ``run_pipeline(..., n_jobs=1)`` runs ``sequential``
unless options are given; with options the named backend runs with one worker (the
sequential backend could not honour them). A stateful filter whose every batch failed (or
whose ``flush`` wrote nothing) has no shard, and its ``merge`` is not called.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from abc import abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from curator_worker.backends.run_result import RunResult, describe, failure_record
from curator_worker.backends.units import (
    BatchReport,
    WorkUnit,
    plan_units,
)
from curator_worker.contract.pipeline import Pipeline, is_stateful
from curator_worker.contract.planning import auto_batch_size
from curator_worker.errors import JobFailedError
from curator_worker.metrics import safe_record_results, stage_names
from curator_worker.outcome import IndexResult, error_record
from curator_worker.progress import ProgressReporter
from curator_worker.run import RunBackend, RunConfig
from curator_worker.shards import (
    is_url,
    merge_shards,
    output_path_of,
    remove_shard_location,
    shard_location,
    storage_options_of,
)

log = logging.getLogger(__name__)

#: Options every local parallel backend accepts.
COMMON_OPTIONS: frozenset[str] = frozenset({"batch_size", "gather", "on_error"})
#: Values of the ``on_error`` option.
ON_ERROR_MODES = ("raise", "collect")


@dataclass(frozen=True)
class LocalOptions:
    """The parsed options of a local parallel run.

    Attributes
    ----------
    batch_size : int | None
        Indices per batch, or ``None`` for automatic.
    gather : bool
        Merge shards at the end of the run.
    on_error : str
        ``raise`` or ``collect``.
    extra : dict
        The backend's own options.
    """

    batch_size: int | None = None
    gather: bool = True
    on_error: str = "raise"
    extra: dict[str, Any] = field(default_factory=dict)


def parse_options(
    backend: str, kwargs: Mapping[str, Any], own: frozenset[str] = frozenset(),
    common: frozenset[str] = COMMON_OPTIONS,
) -> LocalOptions:
    """Validate the keyword options given to backend ``backend``.

    ``common`` are the shared options it accepts besides ``own`` (the ``sequential``
    backend takes ``on_error`` alone, as one of ``own``).

    Raises
    ------
    TypeError
        For an option the backend does not know (the message lists the known ones).
    ValueError
        For a bad value of ``batch_size``, ``gather`` or ``on_error``.
    """
    known = common | own
    unknown = set(kwargs) - known
    if unknown:
        raise TypeError(
            f"Unknown {backend} backend option(s): {', '.join(sorted(unknown))}. "
            f"Known options: {', '.join(sorted(known))}."
        )
    batch_size = kwargs.get("batch_size")
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    gather = kwargs.get("gather", True)
    if not isinstance(gather, bool):
        raise ValueError(f"gather must be True or False, got {gather!r}.")
    on_error = kwargs.get("on_error", "raise")
    if on_error not in ON_ERROR_MODES:
        raise ValueError(f"on_error must be 'raise' or 'collect', got {on_error!r}.")
    extra = {k: v for k, v in kwargs.items() if k in own and k not in COMMON_OPTIONS}
    return LocalOptions(batch_size=batch_size, gather=gather, on_error=on_error, extra=extra)


# --------------------------------------------------------------------------- the run


class LocalRun:
    """Book-keeping of one local parallel run: plan, results, shards, progress, gather.

    Backends call :meth:`index_finished` (progress, any thread), :meth:`commit` (a unit's
    final results and shards), :meth:`fail` (an index failed outside ``execute_batch``:
    timeout, crash) and :meth:`fail_unit`, then :meth:`finish`.

    Parameters
    ----------
    backend : str
        The backend's name (for messages and the run id).
    pipeline : Pipeline
        The pipeline.
    config : RunConfig
        The run's configuration.
    options : LocalOptions
        Parsed options.
    """

    def __init__(
        self, backend: str, pipeline: Pipeline, config: RunConfig, options: LocalOptions
    ) -> None:
        self.backend = backend
        self.pipeline = pipeline
        self.config = config
        self.options = options
        self.run_id = f"{backend}-{uuid.uuid4().hex}"
        self.indices = (list(range(len(pipeline))) if config.indices is None
                        else list(config.indices))
        self.stateful = [n for n, f in enumerate(pipeline.filters) if is_stateful(f)]
        self.finals = {n: output_path_of(pipeline.filters[n]) for n in self.stateful}
        self.n_jobs = config.resolved_n_jobs
        size = options.batch_size or auto_batch_size(len(self.indices), self.n_jobs)
        self.units = plan_units(pipeline, self.indices, size)
        self.results: dict[int, IndexResult] = {}
        self.shards: dict[int, list[tuple[tuple[int, int], str]]] = {n: [] for n in self.stateful}
        self._lock = threading.Lock()
        self._done: set[int] = set()
        self._failed: set[int] = set()
        self._progress = ProgressReporter(len(self.indices), config.progress, label=backend)
        self._names = stage_names(pipeline) if pipeline.track_metrics else {}
        log.debug("%s run %s: %d indices in %d batches", backend, self.run_id,
                  len(self.indices), len(self.units))

    def __enter__(self) -> LocalRun:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.update(len(self._done), len(self._failed), force=True)
        self._progress.__exit__(None, None, None)

    # -- events ---------------------------------------------------------------------

    def index_finished(self, result: IndexResult) -> None:
        """Count one finished index for progress (safe from any thread; idempotent)."""
        with self._lock:
            if result.ok:
                self._failed.discard(result.index)
                self._done.add(result.index)
            else:
                self._done.discard(result.index)
                self._failed.add(result.index)
            self._progress.update(len(self._done), len(self._failed))

    def commit(self, unit: WorkUnit, report: BatchReport) -> None:
        """Record a unit's results and shards as final."""
        with self._lock:
            for n_str, path in report.shards.items():
                self.shards.setdefault(int(n_str), []).append((unit.order, path))
        for result in report.results:
            self.results[result.index] = result
            self.index_finished(result)
        self._record(report.results)

    def _record(self, results: Sequence[IndexResult]) -> None:
        """Record ``results`` in the pipeline's metrics store (with ``track_metrics``)."""
        if self.pipeline.track_metrics:
            safe_record_results(self.pipeline, results, self._names)

    def fail(self, index: int, record: dict[str, Any]) -> None:
        """Record ``index`` as failed with ``record`` (it contributes no filter state)."""
        log.warning("%s run %s: index %d failed: %s", self.backend, self.run_id, index,
                    describe(record))
        result = IndexResult(index, error=record)
        self.results[index] = result
        self.index_finished(result)
        self._record([result])

    def fail_unit(self, unit: WorkUnit, exc: BaseException) -> None:
        """Record every index of ``unit`` as failed because running the unit raised."""
        record = error_record(exc, kind="error")
        for index in unit.indices:
            self.fail(index, dict(record))

    def collect(
        self,
        futures: Mapping[Any, WorkUnit],
        completed: Callable[[Iterable[Any]], Iterable[Any]],
    ) -> None:
        """Commit each unit's report as its future completes; a raising future fails it.

        ``completed`` is the executor's ``as_completed`` (concurrent.futures' or dask's).
        """
        for future in completed(futures):
            unit = futures[future]
            try:
                report = future.result()
            except Exception as exc:  # noqa: BLE001 - a lost worker (KilledWorker, ...)
                self.fail_unit(unit, exc)
            else:
                self.commit(unit, report)

    # -- the end --------------------------------------------------------------------

    def gather(self) -> list[str]:
        """Merge this run's shards into each stateful filter's output; remove the shards.

        A filter with no shard (every index failed, or ``flush`` wrote nothing) is left
        unmerged. Shards are removed only after a successful merge.
        """
        written = []
        for n in self.stateful:
            shards = [path for _, path in sorted(self.shards.get(n, []))]
            if shards:
                written.append(merge_shards(self.pipeline.filters[n], shards, self.finals[n]))
                log.info("%s run %s: merged %d shards into %s", self.backend, self.run_id,
                         len(shards), self.finals[n])
            # shards are always written under the run's shard location (write_shards)
            remove_shard_location(self.pipeline.filters[n], self.run_id)
        return written

    def prune_uncommitted(self) -> None:
        """Remove files of this run's shard folders that no committed unit reported.

        A worker lost after renaming its shard but before reporting it (killed, or a dask
        task re-run elsewhere) leaves a shard whose indices are failed or counted again;
        so that :func:`~curator_worker.gather.gather_pipeline` merges only committed
        shards, such files (and stray temp files) are removed when ``gather=False``. A URL
        output's shard prefix is listed and its uncommitted objects removed the same way.
        """
        for n in self.stateful:
            location = shard_location(self.finals[n], self.run_id)
            if is_url(location):
                from curator_worker.components.storage import list_objects, remove_objects

                committed_urls = {path for _, path in self.shards.get(n, [])}
                options = storage_options_of(self.pipeline.filters[n])
                strays = [url for url in list_objects(location + "/", options)
                          if url not in committed_urls]
                for stray in strays:
                    log.warning("%s run %s: removing uncommitted shard object %s",
                                self.backend, self.run_id, stray)
                remove_objects(strays, options)
                continue
            committed = {os.path.abspath(path) for _, path in self.shards.get(n, [])}
            folders = {Path(path).parent for path in committed}
            folders.add(Path(location))
            for folder in folders:
                for stray in folder.glob("*"):
                    if stray.is_file() and os.path.abspath(stray) not in committed:
                        log.warning("%s run %s: removing uncommitted shard file %s",
                                    self.backend, self.run_id, stray)
                        stray.unlink(missing_ok=True)

    def finish(self) -> RunResult:
        """Gather (unless ``gather=False``) and return the results, or raise the failures.

        Raises
        ------
        JobFailedError
            With ``on_error="raise"`` when some index failed: ``state="partial"`` and
            ``failures`` listing every failed index. Shards of the indices that succeeded
            are merged first.
        """
        for index in self.indices:
            if index not in self.results:  # a bug, never silently dropped
                self.fail(index, failure_record(
                    "error", "LostIndexError", f"index {index} never reported a result"))
        if self.options.gather:
            self.gather()
        else:
            self.prune_uncommitted()
        errors = {
            i: self.results[i].error for i in self.indices if self.results[i].error is not None
        }
        paths = [list(self.results[i].paths or []) for i in self.indices]
        result = RunResult(paths, run_id=self.run_id, errors=errors)  # type: ignore[arg-type]
        if errors and self.options.on_error == "raise":
            raise JobFailedError(
                self.run_id, "partial", result.failures,
                f"local {self.backend} run; pass on_error='collect' to get the results "
                "with the failures instead", in_job_store=False,
            )
        return result


class LocalBackend(RunBackend):
    """Base class of the local parallel backends: options, planning, gather, failures.

    Subclasses set :attr:`options` (their own keyword options) and implement
    :meth:`execute`, which runs every unit of ``run.units`` and reports each through
    ``run.commit`` / ``run.fail`` / ``run.fail_unit``.
    """

    #: The backend's own keyword options, besides :data:`COMMON_OPTIONS`.
    options: ClassVar[frozenset[str]] = frozenset()

    def run(self, pipeline: Pipeline, config: RunConfig) -> list[list[str]]:
        """Plan, run every batch, gather, and return the sink paths in the caller's order.

        Returns
        -------
        RunResult
            A ``list[list[str]]`` with ``failures`` (see :class:`RunResult`).
        """
        pipeline.require_sink()
        options = parse_options(self.name, config.backend_options, self.options)
        self.check_options(options)
        with LocalRun(self.name, pipeline, config, options) as run:
            self.execute(run)
        return run.finish()

    def check_options(self, options: LocalOptions) -> None:
        """Validate the backend's own options before anything starts (override)."""

    @abstractmethod
    def execute(self, run: LocalRun) -> None:
        """Run every unit of ``run.units``."""
