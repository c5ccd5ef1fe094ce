"""Unit tests of the pipeline contract: Param, components, Pipeline, run_pipeline, backends."""

from __future__ import annotations

import copy
import json
import pickle
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from curator_worker import run as run_module
from curator_worker.components import FieldStats, NpzPerIndex, SyntheticArrays
from curator_worker.contract.params import _Required
from curator_worker.contract.pipeline import (
    REQUIRED,
    Filter,
    Param,
    Pipeline,
    Sink,
    Source,
    is_stateful,
)
from curator_worker.errors import IndexSelectionError, PipelineError
from curator_worker.run import (
    RunBackend,
    RunConfig,
    get_backend,
    list_backends,
    register_backend,
    resolve_n_jobs,
    run_pipeline,
)

# --------------------------------------------------------------------------- test components


class Numbers(Source[int]):
    """Index i yields i; records every index it was asked for."""

    name = "Numbers"
    description = "0..n-1"

    def __init__(self, n: int = 5, fail_at: int | None = None) -> None:
        self.n = n
        self.fail_at = fail_at
        self.accessed: list[int] = []

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> Iterator[int]:
        self.accessed.append(index)
        if index == self.fail_at:
            raise RuntimeError(f"boom at {index}")
        yield index


class Doubler(Filter[int]):
    name = "Doubler"
    description = "x -> 2x"

    def __init__(self) -> None:
        self.seen: list[int] = []

    def __call__(self, items: Iterator[int]) -> Iterator[int]:
        for x in items:
            self.seen.append(x)
            yield 2 * x


class Recorder(Sink[int]):
    """Returns a fake path per index and records (index, items) calls in order."""

    name = "Recorder"
    description = "records calls"

    def __init__(self, tag: str = "out") -> None:
        self.tag = tag
        self.calls: list[tuple[int, list[int]]] = []

    def __call__(self, items: Iterator[int], index: int) -> list[str]:
        values = list(items)
        self.calls.append((index, values))
        return [f"{self.tag}/{index}.txt"]


class PairedSource(Numbers):
    """Indices 2k and 2k+1 must run together."""

    def partition_indices(self, indices: Sequence[int]) -> list[list[int]] | None:
        groups: dict[int, list[int]] = {}
        for i in indices:
            groups.setdefault(i // 2, []).append(i)
        return list(groups.values())


class TripleSink(Recorder):
    """Indices 3k, 3k+1, 3k+2 must be written together."""

    def partition_indices(self, indices: Sequence[int]) -> list[list[int]] | None:
        groups: dict[int, list[int]] = {}
        for i in indices:
            groups.setdefault(i // 3, []).append(i)
        return list(groups.values())


def make_pipeline(n: int = 5, **source_kwargs: Any) -> tuple[Numbers, Recorder, Pipeline]:
    source = Numbers(n, **source_kwargs)
    sink = Recorder()
    return source, sink, source.write(sink)


# --------------------------------------------------------------------------- Param / REQUIRED


def test_param_without_default_is_required() -> None:
    p = Param("count", "How many")
    assert p.required is True
    assert p.default is REQUIRED
    assert p.type is str
    assert p.choices is None
    assert p.name == "count" and p.description == "How many"


@pytest.mark.parametrize("default", [0, None, "", False, []], ids=repr)
def test_param_with_any_default_is_not_required(default: Any) -> None:
    p = Param("x", "d", type=int, default=default)
    assert p.required is False
    assert p.default == default


def test_param_choices_are_stored_as_list() -> None:
    p = Param("mode", "m", choices=("a", "b"))
    assert p.choices == ["a", "b"]
    assert Param("mode", "m", choices=[]).choices == []


def test_param_explicit_required_default() -> None:
    assert Param("x", "d", default=REQUIRED).required


def test_required_is_a_singleton_that_survives_copy_and_pickle() -> None:
    assert _Required() is REQUIRED
    assert repr(REQUIRED) == "REQUIRED"
    assert copy.copy(REQUIRED) is REQUIRED
    assert copy.deepcopy(REQUIRED) is REQUIRED
    assert pickle.loads(pickle.dumps(REQUIRED)) is REQUIRED
    assert Param("x", "d", default=pickle.loads(pickle.dumps(REQUIRED))).required


# --------------------------------------------------------------------------- generics / ABCs


def test_generic_subclassing_works() -> None:
    source = Numbers(3)
    assert isinstance(source, Source)
    assert list(source[2]) == [2]
    assert Source[int] is not None and Filter[str] is not None and Sink[dict] is not None

    class StrFilter(Filter[str]):
        def __call__(self, items: Iterator[str]) -> Iterator[str]:
            return (s.upper() for s in items)

    class DictSink(Sink[dict]):
        def __call__(self, items: Iterator[dict], index: int) -> list[str]:
            return []

    assert list(StrFilter()(iter(["a"]))) == ["A"]
    assert DictSink()(iter([]), 0) == []
    assert StrFilter().artifacts() == []
    assert Numbers().partition_indices([0, 1]) is None
    assert DictSink().partition_indices([0, 1]) is None


def test_abstract_source_methods_are_enforced() -> None:
    class NoGetItem(Source[int]):
        def __len__(self) -> int:
            return 1

    class NoLen(Source[int]):
        def __getitem__(self, index: int) -> Iterator[int]:
            yield index

    with pytest.raises(TypeError, match="abstract"):
        NoGetItem()
    with pytest.raises(TypeError, match="abstract"):
        NoLen()
    with pytest.raises(TypeError):
        Source()


def test_abstract_filter_and_sink_call_is_enforced() -> None:
    class NoCallFilter(Filter[int]):
        pass

    class NoCallSink(Sink[int]):
        pass

    with pytest.raises(TypeError, match="abstract"):
        NoCallFilter()
    with pytest.raises(TypeError, match="abstract"):
        NoCallSink()


def test_component_class_attributes_and_params_default() -> None:
    assert Numbers.name == "Numbers"
    assert Numbers.description == "0..n-1"
    assert Numbers.params() == []


# --------------------------------------------------------------------------- init_params


class Flexible(Source[int]):
    def __init__(self, a: int, b: int = 2, *args: Any, c: int = 3, **kw: Any) -> None:
        self.a = a

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> Iterator[int]:
        yield index


def test_init_params_from_positional_and_keyword_args() -> None:
    assert Flexible(1, 4).init_params == {"a": 1, "b": 4}
    assert Flexible(a=1, c=5).init_params == {"a": 1, "c": 5}
    assert Flexible(1, c=5, extra=9).init_params == {"a": 1, "c": 5, "extra": 9}
    # *args cannot be saved by name; they are dropped, the named ones kept
    assert Flexible(1, 2, 3, 4).init_params == {"a": 1, "b": 2}
    assert Numbers(7).init_params == {"n": 7}
    assert Numbers().init_params == {}
    assert Recorder(tag="x").init_params == {"tag": "x"}


def test_init_params_is_a_copy() -> None:
    source = Numbers(3)
    source.init_params["n"] = 99
    assert source.init_params == {"n": 3}


def test_init_params_survive_deepcopy() -> None:
    stats = FieldStats(output="s.json", fields="x")
    clone = copy.deepcopy(stats)
    assert clone.init_params == {"output": "s.json", "fields": "x"}


# --------------------------------------------------------------------------- is_stateful


def test_is_stateful() -> None:
    assert is_stateful(FieldStats(output="s.json"))
    assert not is_stateful(Doubler())

    class FlushOnly(Doubler):
        def flush(self) -> str:
            return ""

    class MergeOnly(Doubler):
        @staticmethod
        def merge(shard_paths: list[str], output_path: str) -> str:
            return output_path

    class Both(FlushOnly):
        @staticmethod
        def merge(shard_paths: list[str], output_path: str) -> str:
            return output_path

    assert not is_stateful(FlushOnly())
    assert not is_stateful(MergeOnly())
    assert is_stateful(Both())


# --------------------------------------------------------------------------- Pipeline builder


def test_pipeline_is_immutable() -> None:
    _, _, p = make_pipeline()
    with pytest.raises(AttributeError, match="immutable"):
        p.foo = 1  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        p._sink = None  # type: ignore[misc]
    with pytest.raises(AttributeError):
        p.source = Numbers()  # type: ignore[misc]
    with pytest.raises(AttributeError):
        p._track_metrics = True  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del p._sink
    assert p.sink is not None and p.track_metrics is True  # physicsnemo-curator's default


def test_filter_and_write_return_new_pipelines() -> None:
    source = Numbers(3)
    f1, f2 = Doubler(), Doubler()
    s1, s2 = Recorder("a"), Recorder("b")

    base = Pipeline(source)
    assert base.filters == () and base.sink is None

    p1 = base.filter(f1)
    assert p1 is not base
    assert base.filters == ()
    assert p1.filters == (f1,)

    p2 = p1.write(s1)
    assert p1.sink is None
    assert p2.sink is s1 and p2.filters == (f1,)

    p3 = p2.filter(f2)
    assert p2.filters == (f1,)
    assert p3.filters == (f1, f2) and p3.sink is s1

    p4 = p3.write(s2)
    assert p3.sink is s1 and p4.sink is s2
    assert p4.source is source

    assert source.filter(f1).filters == (f1,)
    assert source.write(s1).sink is s1


def test_track_metrics_survives_builders() -> None:
    p = Pipeline(Numbers(2), track_metrics=True)
    assert p.track_metrics is True
    assert p.filter(Doubler()).write(Recorder()).track_metrics is True
    q = p.with_metrics(False)
    assert q.track_metrics is False and p.track_metrics is True


def test_pipeline_rejects_bad_components() -> None:
    with pytest.raises(PipelineError, match="Source"):
        Pipeline(object())  # type: ignore[arg-type]
    with pytest.raises(PipelineError):
        Pipeline(Numbers(), filters=[42])  # type: ignore[list-item]
    with pytest.raises(PipelineError):
        Pipeline(Numbers(), sink=42)  # type: ignore[arg-type]


def test_pipeline_copy_and_pickle_roundtrip() -> None:
    _, _, p = make_pipeline(3)
    p = p.with_metrics(True)
    for clone in (copy.copy(p), copy.deepcopy(p), pickle.loads(pickle.dumps(p))):
        assert isinstance(clone, Pipeline)
        assert len(clone) == 3 and clone.track_metrics is True
        assert clone[1] == ["out/1.txt"]
        with pytest.raises(AttributeError):
            clone.foo = 1  # type: ignore[attr-defined]


def test_len_is_source_len() -> None:
    assert len(make_pipeline(7)[2]) == 7
    assert len(make_pipeline(0)[2]) == 0
    assert len(Pipeline(Numbers(4))) == 4


def test_repr_names_the_chain() -> None:
    assert repr(Numbers().filter(Doubler())) == "Pipeline(Numbers -> Doubler -> <no sink>)"
    assert repr(Numbers().write(Recorder())) == "Pipeline(Numbers -> Recorder)"


# --------------------------------------------------------------------------- pipeline[i]


def test_getitem_runs_lazily_only_that_index() -> None:
    source = Numbers(5)
    doubler = Doubler()
    sink = Recorder()
    p = source.filter(doubler).write(sink)
    assert source.accessed == [] and doubler.seen == [] and sink.calls == []

    assert p[3] == ["out/3.txt"]
    assert source.accessed == [3]
    assert doubler.seen == [3]
    assert sink.calls == [(3, [6])]


def test_getitem_with_real_components_writes_files(tmp_path: Path) -> None:
    p = SyntheticArrays(count=3, size=4).write(NpzPerIndex(output_dir=str(tmp_path)))
    paths = p[1]
    assert paths == [str(tmp_path / "item_00000001.npz")]
    assert [f.name for f in tmp_path.iterdir()] == ["item_00000001.npz"]
    with np.load(paths[0]) as data:
        assert data["pressure"].shape == (4,)


def test_getitem_returns_strings() -> None:
    class PathSink(Sink[int]):
        def __call__(self, items: Iterator[int], index: int) -> list[str]:
            list(items)
            return [Path(f"p/{index}")]  # type: ignore[list-item]

    class NoneSink(Sink[int]):
        def __call__(self, items: Iterator[int], index: int) -> list[str]:
            list(items)
            return None  # type: ignore[return-value]

    assert Numbers(2).write(PathSink())[1] == [str(Path("p/1"))]
    assert Numbers(2).write(NoneSink())[1] == []


@pytest.mark.parametrize(
    ("given", "expected"), [(0, 0), (4, 4), (-1, 4), (-5, 0), (-2, 3)], ids=str
)
def test_negative_indices_count_from_the_end(given: int, expected: int) -> None:
    source, sink, p = make_pipeline(5)
    assert p[given] == [f"out/{expected}.txt"]
    assert source.accessed == [expected]
    assert sink.calls[0][0] == expected


@pytest.mark.parametrize("index", [5, 6, -6, 10**9], ids=str)
def test_out_of_range_index_raises_index_error(index: int) -> None:
    source, sink, p = make_pipeline(5)
    with pytest.raises(IndexError, match="out of range"):
        p[index]
    assert source.accessed == [] and sink.calls == []


def test_empty_pipeline_has_no_valid_index() -> None:
    _, _, p = make_pipeline(0)
    with pytest.raises(IndexError):
        p[0]
    with pytest.raises(IndexError):
        p[-1]


@pytest.mark.parametrize("index", ["1", 1.0, None, True, slice(0, 2), [1]], ids=repr)
def test_non_int_index_raises_type_error(index: Any) -> None:
    source, _, p = make_pipeline(5)
    with pytest.raises(TypeError):
        p[index]
    assert source.accessed == []


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64, np.uint16], ids=str)
def test_numpy_int_index_is_accepted(dtype: type) -> None:
    source, sink, p = make_pipeline(5)
    assert p[dtype(2)] == ["out/2.txt"]
    index = sink.calls[0][0]
    assert index == 2 and type(index) is int
    assert p[np.int64(-1)] == ["out/4.txt"]


def test_check_index_normalises() -> None:
    _, _, p = make_pipeline(5)
    assert p.check_index(-1) == 4
    assert p.check_index(np.int64(3)) == 3


def test_no_sink_raises_pipeline_error_saying_call_write() -> None:
    source = Numbers(3)
    for p in (Pipeline(source), source.filter(Doubler())):
        with pytest.raises(PipelineError, match=r"\.write\("):
            p[0]
        with pytest.raises(PipelineError, match=r"\.write\("):
            run_pipeline(p)
    assert source.accessed == []


# --------------------------------------------------------------------------- partition_groups


def test_partition_groups_default_is_one_group_per_index() -> None:
    _, _, p = make_pipeline(5)
    assert p.partition_groups([3, 0, 4]) == [[3], [0], [4]]


def test_partition_groups_source_only() -> None:
    p = PairedSource(6).write(Recorder())
    assert p.partition_groups(range(6)) == [[0, 1], [2, 3], [4, 5]]
    assert p.partition_groups([1, 4, 5]) == [[1], [4, 5]]


def test_partition_groups_sink_only() -> None:
    p = Numbers(6).write(TripleSink())
    assert p.partition_groups(list(range(6))) == [[0, 1, 2], [3, 4, 5]]


def test_partition_groups_source_and_sink_are_merged() -> None:
    p = PairedSource(8).write(TripleSink())
    # source {0,1}{2,3}{4,5}{6,7}, sink {0,1,2}{3,4,5}{6,7} -> {0..5} and {6,7}
    assert p.partition_groups(list(range(8))) == [[0, 1, 2, 3, 4, 5], [6, 7]]
    # a subset: source {0,1}{6,7}; sink {0,1}{6,7}
    assert p.partition_groups([0, 1, 6, 7]) == [[0, 1], [6, 7]]
    # the source and sink only ever see the run's indices
    assert p.partition_groups([7, 3]) == [[7], [3]]


def test_partition_groups_ignores_plain_callable_sink() -> None:
    p = Pipeline(PairedSource(4), sink=lambda items, index: [str(index)])
    assert p.partition_groups([0, 1, 2, 3]) == [[0, 1], [2, 3]]
    assert p[2] == ["2"]


# --------------------------------------------------------------------------- resolve_n_jobs


@pytest.fixture
def eight_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run_module.os, "cpu_count", lambda: 8)


@pytest.mark.parametrize(
    ("n_jobs", "expected"),
    [(1, 1), (3, 3), (64, 64), (0, 9), (-1, 8), (-7, 2), (-8, 1), (-9, 1), (-1000, 1)],
    ids=str,
)
def test_resolve_n_jobs(eight_cpus: None, n_jobs: int, expected: int) -> None:
    assert resolve_n_jobs(n_jobs) == expected


def test_resolve_n_jobs_unknown_cpu_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run_module.os, "cpu_count", lambda: None)
    assert resolve_n_jobs(0) == 2
    assert resolve_n_jobs(-1) == 1
    assert resolve_n_jobs(-5) == 1


@pytest.mark.parametrize("n_jobs", [1.5, "2", None, True], ids=repr)
def test_resolve_n_jobs_rejects_non_int(n_jobs: Any) -> None:
    with pytest.raises(TypeError):
        resolve_n_jobs(n_jobs)


# --------------------------------------------------------------------------- backend registry


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> dict[str, type[RunBackend]]:
    """A private copy of the backend registry, restored after the test."""
    run_module._load_builtins()
    private = dict(run_module._REGISTRY)
    monkeypatch.setattr(run_module, "_REGISTRY", private)
    return private


class RecordingBackend(RunBackend):
    """Records the RunConfig it gets; returns fake paths."""

    name = "test-recording"
    description = "records configs"
    configs: ClassVar[list[RunConfig]] = []

    def run(self, pipeline: Pipeline, config: RunConfig) -> list[list[str]]:
        type(self).configs.append(config)
        return [[f"rec/{i}"] for i in config.indices]


@pytest.fixture
def recording(registry: dict[str, type[RunBackend]]) -> type[RecordingBackend]:
    RecordingBackend.configs = []
    register_backend(RecordingBackend)
    return RecordingBackend


def test_register_backend_duplicate_name_raises(registry: dict) -> None:
    class First(RunBackend):
        name = "test-dup"

        def run(self, pipeline: Pipeline, config: RunConfig) -> list[list[str]]:
            return []

    class Second(First):
        name = "test-dup"

    assert register_backend(First) is First
    assert register_backend(First) is First  # the same class again is harmless
    with pytest.raises(ValueError, match="test-dup"):
        register_backend(Second)
    assert registry["test-dup"] is First
    with pytest.raises(ValueError, match="already registered"):
        register_backend(type("Seq", (First,), {"name": "sequential"}))


def test_register_backend_without_name_raises(registry: dict) -> None:
    class Nameless(RunBackend):
        def run(self, pipeline: Pipeline, config: RunConfig) -> list[list[str]]:
            return []

    with pytest.raises(ValueError, match="name"):
        register_backend(Nameless)


def test_register_backend_works_as_decorator(registry: dict) -> None:
    @register_backend
    class Deco(RunBackend):
        name = "test-deco"

        def run(self, pipeline: Pipeline, config: RunConfig) -> list[list[str]]:
            return []

    assert isinstance(get_backend("test-deco"), Deco)


def test_get_backend_unknown_lists_names(registry: dict) -> None:
    with pytest.raises(ValueError, match="no-such-backend") as info:
        get_backend("no-such-backend")
    message = str(info.value)
    assert "sequential" in message and "celery" in message


def test_get_backend_known() -> None:
    from curator_worker.backends.sequential import SequentialBackend

    assert isinstance(get_backend("sequential"), SequentialBackend)


def test_backend_with_missing_package_raises_import_error(registry: dict) -> None:
    class Needy(RunBackend):
        name = "test-needy"
        description = "needs a package that is not installed"
        requires = ("json", "curator_test_no_such_package_xyz")
        extra = "needy"

        def run(self, pipeline: Pipeline, config: RunConfig) -> list[list[str]]:
            return []

    register_backend(Needy)
    assert Needy.is_available() is False
    with pytest.raises(ImportError, match="curator_test_no_such_package_xyz") as info:
        get_backend("test-needy")
    assert "curator-worker[needy]" in str(info.value)
    with pytest.raises(ImportError, match="curator_test_no_such_package_xyz"):
        run_pipeline(make_pipeline(3)[2], backend="test-needy", n_jobs=2)
    listed = list_backends()["test-needy"]
    assert listed == {
        "description": "needs a package that is not installed",
        "available": False,
        "requires": ["json", "curator_test_no_such_package_xyz"],
    }


def test_list_backends_shape() -> None:
    backends = list_backends()
    assert isinstance(backends, dict)
    assert {"sequential", "celery"} <= set(backends)
    for name, info in backends.items():
        assert isinstance(name, str) and name
        assert set(info) == {"description", "available", "requires"}
        assert isinstance(info["description"], str) and info["description"]
        assert isinstance(info["available"], bool)
        assert isinstance(info["requires"], list)
        assert all(isinstance(r, str) for r in info["requires"])
    assert backends["sequential"]["available"] is True
    assert backends["sequential"]["requires"] == []
    assert set(backends["celery"]["requires"]) >= {"celery", "redis"}
    json.dumps(backends)  # plain data


# --------------------------------------------------------------------------- run_pipeline


def test_run_pipeline_default_runs_everything_in_order() -> None:
    source, sink, p = make_pipeline(4)
    assert run_pipeline(p) == [[f"out/{i}.txt"] for i in range(4)]
    assert [c[0] for c in sink.calls] == [0, 1, 2, 3]


def test_run_pipeline_results_follow_shuffled_indices() -> None:
    source, sink, p = make_pipeline(20)
    indices = list(range(20))
    random.Random(3).shuffle(indices)
    indices = indices[:12]
    results = run_pipeline(p, backend="sequential", indices=indices)
    assert results == [[f"out/{i}.txt"] for i in indices]
    assert [c[0] for c in sink.calls] == indices
    assert source.accessed == indices


def test_run_pipeline_accepts_numpy_indices() -> None:
    _, _, p = make_pipeline(5)
    assert run_pipeline(p, indices=np.array([4, 1])) == [["out/4.txt"], ["out/1.txt"]]


@pytest.mark.parametrize(
    "indices",
    [[0, 1, 1], [2, 0, 2], [5], [0, 99], [-1], [0.5], [True]],
    ids=["dup", "dup-apart", "len", "far", "negative", "float", "bool"],
)
def test_run_pipeline_rejects_bad_indices(indices: list[Any]) -> None:
    source, sink, p = make_pipeline(5)
    with pytest.raises(IndexSelectionError):
        run_pipeline(p, indices=indices)
    assert source.accessed == [] and sink.calls == []


def test_index_selection_error_is_value_error() -> None:
    with pytest.raises(ValueError):
        run_pipeline(make_pipeline(2)[2], indices=[0, 0])


def test_run_pipeline_n_jobs_is_resolved(eight_cpus: None, recording: type) -> None:
    _, sink, p = make_pipeline(4)
    assert run_pipeline(p, backend="test-recording", n_jobs=-1) == [
        [f"rec/{i}"] for i in range(4)
    ]
    assert run_pipeline(p, backend="test-recording", n_jobs=0, indices=[2, 0])
    assert run_pipeline(p, backend="test-recording", n_jobs=3, extra_option="x")
    configs = recording.configs
    assert [c.n_jobs for c in configs] == [8, 9, 3]
    assert configs[1].indices == [2, 0]
    assert configs[2].backend_kwargs == {"extra_option": "x"}
    assert configs[0].backend_kwargs == {}
    assert sink.calls == []


@pytest.mark.parametrize("n_jobs", [1, -7 - 1, -100], ids=str)
def test_run_pipeline_one_job_forces_sequential(
    eight_cpus: None, recording: type, n_jobs: int
) -> None:
    _, sink, p = make_pipeline(3)
    assert run_pipeline(p, backend="test-recording", n_jobs=n_jobs) == [
        [f"out/{i}.txt"] for i in range(3)
    ]
    assert recording.configs == []
    assert len(sink.calls) == 3


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, False),
        ({"use_tui": True}, True),
        ({"use_tui": False}, False),
        ({"progress": True}, True),
        ({"progress": "log"}, "log"),
        ({"progress": False, "use_tui": True}, False),
        ({"progress": "log", "use_tui": False}, "log"),
    ],
    ids=["none", "tui", "no-tui", "progress", "log", "progress-wins", "log-wins"],
)
def test_run_pipeline_progress_spellings(
    recording: type, kwargs: dict[str, Any], expected: Any
) -> None:
    _, _, p = make_pipeline(2)
    run_pipeline(p, backend="test-recording", n_jobs=2, **kwargs)
    assert recording.configs[-1].progress == expected


@pytest.mark.parametrize(
    "kwargs", [{"use_tui": False}, {"use_tui": True}, {"progress": "log"}, {"progress": False}],
    ids=["use_tui=False", "use_tui=True", "progress=log", "progress=False"],
)
def test_sequential_backend_accepts_progress_options(kwargs: dict[str, Any]) -> None:
    _, _, p = make_pipeline(3)
    assert run_pipeline(p, backend="sequential", **kwargs) == [
        [f"out/{i}.txt"] for i in range(3)
    ]


def test_run_pipeline_unknown_backend_raises_value_error() -> None:
    with pytest.raises(ValueError, match="Unknown backend"):
        run_pipeline(make_pipeline(2)[2], backend="no-such-backend", n_jobs=2)


def test_sequential_exception_propagates() -> None:
    source, sink, p = make_pipeline(5, fail_at=2)
    with pytest.raises(RuntimeError, match="boom at 2"):
        run_pipeline(p, backend="sequential")
    assert source.accessed == [0, 1, 2]
    assert [c[0] for c in sink.calls] == [0, 1]


def test_sequential_exception_from_synthetic_source(tmp_path: Path) -> None:
    p = SyntheticArrays(count=4, size=2, fail_indices="1").write(
        NpzPerIndex(output_dir=str(tmp_path))
    )
    with pytest.raises(RuntimeError, match="synthetic failure at index 1"):
        run_pipeline(p, backend="sequential", indices=[3, 1, 0])
    assert sorted(f.name for f in tmp_path.iterdir()) == ["item_00000003.npz"]


def test_stateful_filter_runs_on_copies_and_never_double_counts(tmp_path: Path) -> None:
    stats_path = tmp_path / "stats.json"
    stats = FieldStats(output=str(stats_path))
    p = (
        SyntheticArrays(count=3, size=4, items_per_index=2)
        .filter(stats)
        .write(NpzPerIndex(output_dir=str(tmp_path / "arrays")))
    )
    first = run_pipeline(p, backend="sequential")
    assert len(first) == 3
    doc1 = json.loads(stats_path.read_text())
    assert doc1["items"] == 6
    assert doc1["fields"]["pressure"]["count"] == 6 * 4
    text1 = stats_path.read_text()

    second = run_pipeline(p, backend="sequential")
    assert second == first
    assert stats_path.read_text() == text1

    # the pipeline's own filter was never touched
    assert stats.summary() == {"fields": {}, "items": 0, "state": {}}
    assert stats._output_path == str(stats_path)

    # a subset run rewrites the output with just that subset
    run_pipeline(p, backend="sequential", indices=[1])
    assert json.loads(stats_path.read_text())["items"] == 2
    assert not [f for f in tmp_path.iterdir() if f.name.endswith(".tmp")]


def test_stateful_filter_stats_match_a_direct_computation(tmp_path: Path) -> None:
    stats_path = tmp_path / "stats.json"
    source = SyntheticArrays(count=3, size=5, fields="x")
    p = source.filter(FieldStats(output=str(stats_path))).write(
        NpzPerIndex(output_dir=str(tmp_path / "a"))
    )
    run_pipeline(p, indices=[2, 0])
    values = np.concatenate([next(iter(source[i]))["fields"]["x"] for i in (2, 0)])
    got = json.loads(stats_path.read_text())["fields"]["x"]
    assert got["count"] == 10
    assert got["mean"] == pytest.approx(values.mean())
    assert got["min"] == values.min() and got["max"] == values.max()


# --------------------------------------------------------------------------- physicsnemo-curator's
# dataclass Pipeline, RunConfig and backend names


def test_dataclass_style_constructor_and_its_defaults(tmp_path: Path) -> None:
    source, f, sink = Numbers(3), Doubler(), Recorder()
    p = Pipeline(source=source, filters=[f], sink=sink, track_metrics=False, db_dir=tmp_path)
    assert (p.source, p.filters, p.sink) == (source, (f,), sink)
    assert p.track_metrics is False and p.db_dir == tmp_path
    assert p[1] == ["out/1.txt"]
    bare = Pipeline(source=source)
    assert (bare.track_metrics, bare.track_memory, bare.track_gpu) == (True, True, False)
    assert (bare.db_dir, bare.db_file, bare.resume, bare.sink) == (None, None, False, None)
    assert source.write(sink).track_metrics is True  # builders start from the same defaults


def test_run_settings_may_be_set_but_the_chain_may_not(tmp_path: Path) -> None:
    _, _, p = make_pipeline(3)
    p.track_metrics = False
    p.track_memory = False
    p.db_dir = tmp_path
    p.resume = True
    assert (p.track_metrics, p.track_memory, p.db_dir, p.resume) == (False, False, tmp_path, True)
    for name in ("source", "filters", "sink", "_filters", "invocation_id", "metrics"):
        with pytest.raises(AttributeError, match="immutable"):
            setattr(p, name, None)
    q = p.filter(Doubler())  # builders copy the settings into a new pipeline
    assert q is not p and len(p.filters) == 0
    assert (q.track_metrics, q.track_memory, q.db_dir, q.resume) == (False, False, tmp_path, True)
    assert q.invocation_id != p.invocation_id
    with pytest.raises(TypeError, match="track_metrics must be True or False"):
        p.track_metrics = "yes"  # type: ignore[assignment]


def test_pickle_keeps_settings_and_run_id_but_not_the_open_store(tmp_path: Path) -> None:
    _, _, p = make_pipeline(3)
    p.db_dir = tmp_path
    p[0]  # opens the store
    clone = pickle.loads(pickle.dumps(p))
    assert clone.db_dir == tmp_path and clone.invocation_id == p.invocation_id
    assert clone._store is None and p._store is not None
    assert [m.index for m in clone.metrics.indices] == [0]  # the same run's records


def test_no_sink_is_a_runtime_error() -> None:
    p = Numbers(2).filter(Doubler())
    for call in (lambda: p[0], lambda: run_pipeline(p)):
        with pytest.raises(RuntimeError, match="no sink") as info:
            call()
        assert isinstance(info.value, PipelineError)


def test_run_config_fields_and_resolved_n_jobs(eight_cpus: None) -> None:
    config = RunConfig()
    assert (config.n_jobs, config.progress, config.indices, config.backend_options) == (
        1, True, None, {})
    assert [RunConfig(n_jobs=n).resolved_n_jobs for n in (4, 1, -1, -2, -500)] == [
        4, 1, 8, 7, 1]
    assert RunConfig(use_tui=False).progress is False
    assert RunConfig(progress="log").use_tui is True
    options = RunConfig(n_jobs=2, indices=[3], backend_options={"batch_size": 2})
    assert options.backend_kwargs == {"batch_size": 2} and options.indices == [3]


def test_backend_classes_are_importable_by_name() -> None:
    import curator_worker
    import curator_worker.backends
    from curator_worker import run

    expected = {"SequentialBackend": "sequential", "ThreadBackend": "thread",
                "ThreadPoolBackend": "thread_pool", "ProcessPoolBackend": "process_pool",
                "LokyBackend": "loky", "DaskBackend": "dask", "CeleryBackend": "celery"}
    for class_name, backend in expected.items():
        classes = {getattr(m, class_name) for m in (curator_worker, run, curator_worker.backends)}
        assert len(classes) == 1
        (cls,) = classes
        assert issubclass(cls, RunBackend) and cls.name == backend
        assert type(get_backend(backend)) is cls
    with pytest.raises(AttributeError):
        run.NoSuchBackend  # noqa: B018


def test_auto_backend_runs_the_process_pool(tmp_path: Path) -> None:
    assert run_module._pick_auto_backend() == "process_pool"
    p = SyntheticArrays(count=3, size=2).write(NpzPerIndex(output_dir=str(tmp_path)))
    assert len(run_pipeline(p, backend="auto", n_jobs=2)) == 3


def test_unknown_backend_is_refused_even_with_one_job() -> None:
    with pytest.raises(ValueError, match="Unknown backend 'magic'"):
        run_pipeline(make_pipeline(2)[2], backend="magic", n_jobs=1)


def test_empty_index_list_runs_nothing() -> None:
    source, sink, p = make_pipeline(3)
    assert run_pipeline(p, indices=[]) == []
    with pytest.raises(ValueError, match="Unknown backend"):
        run_pipeline(p, indices=[], backend="magic")
    assert run_pipeline(p, indices=np.array([], dtype=int)) == []
    assert source.accessed == [] and sink.calls == []


class SourceAwareSink(Recorder):
    """A sink that names its outputs after the source (physicsnemo-curator's hook)."""

    def set_source(self, source: Source[Any]) -> None:
        self.tag = f"from-{type(source).__name__}-{len(source)}"


def test_a_sink_with_set_source_gets_the_source_however_the_pipeline_is_built() -> None:
    built = [
        lambda s, k: s.write(k),
        lambda s, k: s.filter(Doubler()).write(k),
        lambda s, k: Pipeline(source=s, sink=k),
        lambda s, k: pickle.loads(pickle.dumps(Pipeline(source=s, sink=k))),
    ]
    for build in built:
        p = build(Numbers(3), SourceAwareSink())
        assert p[1] == ["from-Numbers-3/1.txt"]


def test_indices_may_be_any_iterable() -> None:
    source, _, p = make_pipeline(5)
    assert run_pipeline(p, indices=(i for i in (4, 2))) == [["out/4.txt"], ["out/2.txt"]]
    assert run_pipeline(p, indices=range(1, 3)) == [["out/1.txt"], ["out/2.txt"]]
