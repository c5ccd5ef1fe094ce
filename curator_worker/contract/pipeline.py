"""The pipeline contract: ``Param``, ``Source``, ``Filter``, ``Sink`` and ``Pipeline``.

Names and semantics match physicsnemo-curator's ``core.base`` so its users can bring their
components unchanged. A pipeline is an indexed source, zero or more filters and a sink::

    pipeline = MySource(root="data/").filter(MyFilter()).write(MySink(output_dir="out/"))
    paths = pipeline[0]          # runs index 0 lazily and returns the sink's paths

Components remember the arguments they were built with, so a pipeline can be saved as a
spec (:meth:`Pipeline.save`) and rebuilt on another machine (:meth:`Pipeline.load`).
"""

from __future__ import annotations

import operator
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from curator_worker.contract.chain import run_chain, source_items
from curator_worker.contract.params import REQUIRED, Component, Param, init_signature
from curator_worker.contract.partitions import merge_partitions
from curator_worker.contract.recorded import PipelineStateError, RecordedRuns, run_recorded
from curator_worker.contract.spec import load_spec, pipeline_to_spec, save_spec
from curator_worker.errors import PipelineError

if TYPE_CHECKING:
    from os import PathLike

__all__ = [
    "REQUIRED", "SETTABLE", "Filter", "Param", "Pipeline", "PipelineStateError", "Sink",
    "Source", "init_signature", "is_stateful", "normalise_index", "source_items",
]

T = TypeVar("T")


def normalise_index(index: int, length: int) -> int:
    """``index`` as an int in ``[0, length)``; negative indices count from the end.

    What a :class:`Source` of ``length`` indices accepts in ``__getitem__``.

    Raises
    ------
    TypeError
        If ``index`` is not an integer (``bool`` included).
    IndexError
        If ``index`` is out of range.

    Examples
    --------
    >>> normalise_index(-1, 10)
    9
    """
    if isinstance(index, bool):
        raise TypeError("Source indices must be integers, not bool.")
    i = operator.index(index)
    if i < 0:
        i += length
    if not 0 <= i < length:
        raise IndexError(f"Index {index} is out of range for a source of {length} indices.")
    return i


class Source(Component, Generic[T], ABC):
    """An indexed collection of work: ``len(source)`` indices, each yielding items.

    Subclasses set the class attributes ``name`` and ``description``, declare their
    constructor parameters in :meth:`params`, and implement ``__len__`` and
    ``__getitem__``.

    Examples
    --------
    >>> class Numbers(Source[int]):
    ...     name = "Numbers"
    ...     description = "0..n-1"
    ...     def __init__(self, n: int = 3) -> None:
    ...         self.n = n
    ...     def __len__(self) -> int:
    ...         return self.n
    ...     def __getitem__(self, index: int):
    ...         yield index
    >>> list(Numbers()[2])
    [2]
    """

    component_kind = "source"

    @abstractmethod
    def __len__(self) -> int:
        """Number of indices."""

    @abstractmethod
    def __getitem__(self, index: int) -> Iterator[T]:
        """Yield the item(s) of ``index``."""

    def partition_indices(self, indices: Sequence[int]) -> list[list[int]] | None:
        """Groups of ``indices`` that must run in one worker, in order.

        Parameters
        ----------
        indices : Sequence[int]
            The indices of this run.

        Returns
        -------
        list[list[int]] | None
            ``None`` (the default) when every index is independent.
        """
        return None

    def filter(self, f: Filter[Any]) -> Pipeline:
        """Start a pipeline from this source with filter ``f``."""
        return Pipeline(self).filter(f)

    def write(self, s: Sink[Any]) -> Pipeline:
        """Start a pipeline from this source that writes with sink ``s``."""
        return Pipeline(self).write(s)


class Filter(Component, Generic[T], ABC):
    """Transforms the stream of items of one index: expand, contract or pass through.

    A *stateful* filter accumulates over items (statistics, an index file). It also has
    ``flush()`` (write the state to ``self._output_path``), an ``_output_path`` attribute
    and a static ``merge(shard_paths, output_path) -> str`` that combines the shards that
    parallel workers flushed. Runners set ``_output_path`` per shard; never rely on the PID.
    """

    component_kind = "filter"

    @abstractmethod
    def __call__(self, items: Iterator[T]) -> Iterator[T]:
        """Consume ``items`` and yield the items that go on."""

    def artifacts(self) -> list[str]:
        """Paths of files this filter writes besides the sink's outputs."""
        return []


class Sink(Component, Generic[T], ABC):
    """Writes the items of one index and returns the paths written."""

    component_kind = "sink"

    @abstractmethod
    def __call__(self, items: Iterator[T], index: int) -> list[str]:
        """Write ``items`` of ``index``; return the paths written."""

    def partition_indices(self, indices: Sequence[int]) -> list[list[int]] | None:
        """Groups of ``indices`` that must be written by one worker, in order.

        Returns ``None`` (the default) when every index is independent.
        """
        return None


def is_stateful(f: Filter[Any]) -> bool:
    """True when ``f`` follows the stateful-filter protocol (``flush`` + ``merge``)."""
    return callable(getattr(f, "flush", None)) and callable(getattr(type(f), "merge", None))


#: Attributes a user may set on a pipeline (physicsnemo-curator's dataclass fields that
#: do not change what it computes); everything else is immutable.
SETTABLE = ("track_metrics", "track_memory", "track_gpu", "db_dir", "db_file", "resume")


class Pipeline(RecordedRuns):
    """A source → filters → sink chain; the chain is immutable, its run settings are not.

    Built like physicsnemo-curator's dataclass, ``Pipeline(source=, filters=, sink=,
    track_metrics=, db_dir=)``, or with the builders ``source.filter(f).write(s)``, which
    return new pipelines. ``track_metrics``, ``track_memory``, ``track_gpu``, ``db_dir``,
    ``db_file`` and ``resume`` may be set on a pipeline; source, filters and sink may not.

    Parameters
    ----------
    source : Source
        Where the items come from.
    filters : Sequence[Filter], optional
        Applied in order to each index's items.
    sink : Sink, optional
        Writes each index's items; required before running. A sink with a
        ``set_source(source)`` method is given the source (as physicsnemo-curator does).
    track_metrics : bool, optional
        Record each index's per-stage wall time, peak memory and outcome in a local store
        (:mod:`curator_worker.metrics`), on every backend; read them with :attr:`metrics`.
        Needed by ``resume``. Default True.
    track_memory : bool, optional
        With ``track_metrics``, measure each index's peak Python memory (``tracemalloc``,
        which slows Python code). Default True.
    track_gpu : bool, optional
        Accepted for compatibility; GPU memory is not measured.
    db_dir : str | os.PathLike, optional
        Folder of the metrics store (default: ``$CURATOR_DB_DIR`` or the user cache).
    db_file : str | os.PathLike, optional
        The metrics store file itself (overrides ``db_dir``).
    resume : bool, optional
        Default of ``run_pipeline(..., resume=)``: skip indices a previous run of the same
        pipeline completed.

    Examples
    --------
    >>> from curator_worker.components import SyntheticArrays, NpzPerIndex
    >>> p = SyntheticArrays(count=4).write(NpzPerIndex(output_dir="/tmp/cw-doc"))
    >>> len(p)
    4
    >>> p.track_metrics = False      # run settings may change; the chain may not
    """

    __slots__ = ("_source", "_filters", "_sink", "_track_metrics", "_track_memory",
                 "_track_gpu", "_db_dir", "_db_file", "_resume", "_store", "_invocation")

    def __init__(
        self,
        source: Source[Any],
        filters: Sequence[Filter[Any]] = (),
        sink: Sink[Any] | None = None,
        track_metrics: bool = True,
        track_memory: bool = True,
        track_gpu: bool = False,
        db_dir: str | PathLike[str] | None = None,
        db_file: str | PathLike[str] | None = None,
        resume: bool = False,
        *,
        invocation_id: str | None = None,
    ) -> None:
        if not isinstance(source, Source):
            raise PipelineError(
                f"Pipeline source must be a Source instance, got {type(source).__name__}."
            )
        for f in filters:
            if not isinstance(f, Filter) and not callable(f):
                raise PipelineError(f"Filter {f!r} is neither a Filter nor callable.")
        if sink is not None and not isinstance(sink, Sink) and not callable(sink):
            raise PipelineError(f"Sink {sink!r} is neither a Sink nor callable.")
        set_source = getattr(sink, "set_source", None)
        if callable(set_source):  # physicsnemo-curator's hook: sinks that name outputs
            set_source(source)  # after the source's files (every way a pipeline is built)
        set_slot = object.__setattr__
        set_slot(self, "_source", source)
        set_slot(self, "_filters", tuple(filters))
        set_slot(self, "_sink", sink)
        set_slot(self, "_store", None)
        set_slot(self, "_invocation", invocation_id or uuid.uuid4().hex)
        for name, value in zip(SETTABLE, (track_metrics, track_memory, track_gpu, db_dir,
                                          db_file, resume), strict=True):
            set_slot(self, f"_{name}", _checked(name, value))

    def __setattr__(self, key: str, value: Any) -> None:
        if key in SETTABLE:
            object.__setattr__(self, f"_{key}", _checked(key, value))
            if key in ("db_dir", "db_file"):
                object.__setattr__(self, "_store", None)  # a different store from now on
            return
        if key == "_store":  # physicsnemo-curator's tests and tools reset it
            object.__setattr__(self, "_store", value)
            return
        raise AttributeError(
            f"Pipeline is immutable; .filter() and .write() return a new pipeline (only "
            f"{', '.join(SETTABLE)} may be set, not {key!r})."
        )

    def __delattr__(self, key: str) -> None:
        raise AttributeError(
            "Pipeline is immutable; .filter() and .write() return a new pipeline."
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuild through __init__ (the open metrics store is not pickled; the invocation
        # id is, so a copy in a worker records as the same run).
        return (_rebuild_pipeline, (self._source, self._filters, self._sink, self._settings(),
                                    self._invocation))

    def _settings(self) -> dict[str, Any]:
        return {name: getattr(self, f"_{name}") for name in SETTABLE}

    def _with(self, filters: Sequence[Filter[Any]], sink: Sink[Any] | None) -> Pipeline:
        return Pipeline(self._source, filters, sink, **self._settings())

    @property
    def source(self) -> Source[Any]:
        """The source."""
        return self._source

    @property
    def filters(self) -> tuple[Filter[Any], ...]:
        """The filters, in order."""
        return self._filters

    @property
    def sink(self) -> Sink[Any] | None:
        """The sink, or ``None`` before :meth:`write`."""
        return self._sink

    @property
    def track_metrics(self) -> bool:
        """Whether per-index metrics are recorded (see :mod:`curator_worker.metrics`)."""
        return self._track_metrics

    @property
    def track_memory(self) -> bool:
        """Whether each index's peak Python memory is measured (with ``track_metrics``)."""
        return self._track_memory

    @property
    def track_gpu(self) -> bool:
        """Accepted for compatibility; GPU memory is not measured."""
        return self._track_gpu

    @property
    def db_dir(self) -> Any:
        """Folder of the metrics store, as given (``None``: the default folder)."""
        return self._db_dir

    @property
    def db_file(self) -> Any:
        """The metrics store file, as given (``None``: ``<db_dir>/<config hash>.db``)."""
        return self._db_file

    @property
    def resume(self) -> bool:
        """Default of ``run_pipeline(..., resume=)``."""
        return self._resume

    @property
    def invocation_id(self) -> str:
        """This pipeline object's run id in the metrics store (kept by copies and pickles)."""
        return self._invocation

    def filter(self, f: Filter[Any]) -> Pipeline:
        """Return a new pipeline with filter ``f`` appended."""
        return self._with((*self._filters, f), self._sink)

    def write(self, s: Sink[Any]) -> Pipeline:
        """Return a new pipeline that writes with sink ``s`` (replacing any sink)."""
        return self._with(self._filters, s)

    def with_metrics(self, track_metrics: bool = True) -> Pipeline:
        """Return a new pipeline with ``track_metrics`` set."""
        settings = self._settings()
        settings["track_metrics"] = track_metrics
        return Pipeline(self._source, self._filters, self._sink, **settings)

    def __len__(self) -> int:
        return len(self._source)

    def check_index(self, index: int) -> int:
        """Validate ``index`` and return it as a non-negative int.

        Raises
        ------
        IndexError
            If ``index`` is outside ``[-len, len)``.
        TypeError
            If ``index`` is not an int.
        """
        if isinstance(index, bool):
            raise TypeError("Pipeline indices must be integers, not bool.")
        try:
            index = operator.index(index)
        except TypeError:
            raise TypeError(
                f"Pipeline indices must be integers, not {type(index).__name__}."
            ) from None
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"Index {index} is out of range for a pipeline of {n} indices.")
        return index

    def require_sink(self) -> Sink[Any]:
        """The sink, or a :class:`PipelineError` saying how to add one."""
        if self._sink is None:
            raise PipelineStateError(
                "Pipeline has no sink. Call .write(sink) before running it."
            )
        return self._sink

    def run_index(
        self,
        index: int,
        filters: Sequence[Filter[Any]] | None = None,
        timings: dict[str, float] | None = None,
    ) -> list[str]:
        """Run one index through the source, ``filters`` (default: this pipeline's) and sink.

        Parameters
        ----------
        index : int
            The index.
        filters : Sequence[Filter], optional
            Filters to use instead of the pipeline's (runners pass per-batch copies).
        timings : dict, optional
            If given, filled with seconds spent in each stage, exclusive of the stages
            upstream: ``source``, ``filter[0]:<Name>``, ..., ``sink``.
        """
        return self.run_valid_index(self.check_index(index), filters, timings)

    def run_valid_index(
        self,
        index: int,
        filters: Sequence[Filter[Any]] | None = None,
        timings: dict[str, float] | None = None,
    ) -> list[str]:
        """:meth:`run_index` for an index that :meth:`check_index` already accepted.

        Batch runners check all their indices at once and skip the per-index check.
        """
        sink = self.require_sink()
        chain = self._filters if filters is None else filters
        return run_chain(self._source, chain, sink, index, timings)

    def __getitem__(self, index: int) -> list[str]:
        """Run ``index`` and return the paths the sink wrote.

        With ``track_metrics`` the index's stage timings, peak memory and outcome are
        recorded in the metrics store (a store that cannot be written only logs a warning).
        """
        if not self._track_metrics:
            return self.run_index(index)
        return run_recorded(self, index)

    def partition_groups(self, indices: Sequence[int]) -> list[list[int]]:
        """The finest groups of ``indices`` that satisfy both source and sink partitions."""
        groups = self.partition_groups_or_none(indices)
        return [[i] for i in indices] if groups is None else groups

    def partition_groups_or_none(self, indices: Sequence[int]) -> list[list[int]] | None:
        """Like :meth:`partition_groups`, but ``None`` when neither side has partitions."""
        source_groups = self._source.partition_indices(list(indices))
        sink = self._sink
        sink_groups = sink.partition_indices(list(indices)) if isinstance(sink, Sink) else None
        if source_groups is None and sink_groups is None:
            return None
        return merge_partitions(source_groups, sink_groups, indices=indices)

    def to_spec(self) -> dict[str, Any]:
        """This pipeline as a spec dict (see :mod:`curator_worker.contract.spec`)."""
        return pipeline_to_spec(self)

    def save(self, path: str | PathLike[str]) -> None:
        """Save this pipeline as a YAML (``.yaml``/``.yml``) or JSON (``.json``) spec."""
        save_spec(self, path)

    @classmethod
    def load(cls, path: str | PathLike[str]) -> Pipeline:
        """Build a pipeline from a YAML or JSON spec file (``track_metrics`` on, the default).

        Raises
        ------
        SpecError
            One line naming the file, the component and the fix.
        """
        pipeline = load_spec(path)
        pipeline.track_metrics = True
        return pipeline

    def __repr__(self) -> str:
        parts = [type(self._source).__name__]
        parts += [type(f).__name__ for f in self._filters]
        parts.append(type(self._sink).__name__ if self._sink is not None else "<no sink>")
        return "Pipeline(" + " -> ".join(parts) + ")"


def _checked(name: str, value: Any) -> Any:
    """A settable pipeline attribute's value, checked (booleans stay booleans)."""
    if name in ("db_dir", "db_file"):
        return value
    if not isinstance(value, bool):
        raise TypeError(f"Pipeline.{name} must be True or False, got {value!r}.")
    return value


def _rebuild_pipeline(
    source: Source[Any],
    filters: Sequence[Filter[Any]],
    sink: Sink[Any] | None,
    settings: Any,
    invocation_id: str | None = None,
) -> Pipeline:
    """Unpickling (and ``copy``) helper of :class:`Pipeline`."""
    if isinstance(settings, bool):  # pickled by an older version: the track_metrics flag
        settings = {"track_metrics": settings}
    return Pipeline(source, filters, sink, **settings, invocation_id=invocation_id)
