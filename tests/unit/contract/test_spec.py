"""Unit tests of pipeline specs: save/load round trips, param coercion and every SpecError."""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from curator_worker.components import FieldStats, FileGlob, NpzPerIndex, SyntheticArrays
from curator_worker.contract.pipeline import Pipeline, Sink, Source
from curator_worker.contract.spec import (
    _module_allowed,
    allowed_module_prefixes,
    build_pipeline,
    pipeline_to_spec,
    read_spec_file,
    spec_hash,
)
from curator_worker.errors import PipelineError, SpecError
from curator_worker.run import run_pipeline

USER_MODULE = "cw_spec_user_components"
BROKEN_MODULE = "cw_spec_broken_components"

USER_MODULE_SOURCE = textwrap.dedent(
    '''
    """Components a spec imports from outside curator_worker (test fixture)."""
    from curator_worker.contract.pipeline import Filter, Param, Sink, Source


    class Modes(Source):
        name = "Modes"
        description = "count indices, with typed params"

        def __init__(self, count, mode="fast", flag=False, scale=1.0):
            self.count = count
            self.mode = mode
            self.flag = flag
            self.scale = scale

        @classmethod
        def params(cls):
            return [
                Param("count", "Number of indices", type=int),
                Param("mode", "Speed", type=str, default="fast", choices=["fast", "slow"]),
                Param("flag", "A switch", type=bool, default=False),
                Param("scale", "A factor", type=float, default=1.0),
            ]

        def __len__(self):
            return self.count

        def __getitem__(self, index):
            yield {"index": index, "value": index * self.scale}


    class HalfDone(Source):
        name = "HalfDone"
        description = "abstract: no __getitem__"

        def __len__(self):
            return 0


    class Passthrough(Filter):
        name = "Passthrough"

        def __call__(self, items):
            yield from items


    class Untyped(Sink):
        """No params(): params come from the signature, values pass through as given."""

        name = "Untyped"

        def __init__(self, output_dir, prefix="x", **extra):
            self.output_dir = output_dir
            self.prefix = prefix
            self.extra = extra

        def __call__(self, items, index):
            list(items)
            return [f"{self.output_dir}/{self.prefix}{index}"]
    '''
)

BROKEN_MODULE_SOURCE = 'raise RuntimeError("cannot start\\nbecause of a second line")\n'


@pytest.fixture
def user_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Importable modules in tmp_path: the user components and one that fails to import."""
    folder = tmp_path / "usermods"
    folder.mkdir()
    (folder / f"{USER_MODULE}.py").write_text(USER_MODULE_SOURCE)
    (folder / f"{BROKEN_MODULE}.py").write_text(BROKEN_MODULE_SOURCE)
    for name in (USER_MODULE, BROKEN_MODULE):
        sys.modules.pop(name, None)
    monkeypatch.syspath_prepend(str(folder))
    yield folder
    for name in (USER_MODULE, BROKEN_MODULE):
        sys.modules.pop(name, None)


@pytest.fixture(autouse=True)
def no_allow_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CURATOR_ALLOWED_MODULES", raising=False)


def write_spec(path: Path, spec: Any) -> Path:
    if path.suffix == ".json":
        path.write_text(json.dumps(spec))
    else:
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def builtin_pipeline(tmp_path: Path) -> Pipeline:
    return (
        SyntheticArrays(count=4, seed=7, size=8, items_per_index=2)
        .filter(FieldStats(output=str(tmp_path / "out" / "stats.json")))
        .write(NpzPerIndex(output_dir=str(tmp_path / "out" / "arrays")))
    )


def components(p: Pipeline) -> list[Any]:
    return [p.source, *p.filters, p.sink]


def outputs(results: list[list[str]]) -> list[dict[str, np.ndarray]]:
    out = []
    for paths in results:
        (path,) = paths
        with np.load(path) as data:
            out.append({k: data[k].copy() for k in data.files})
    return out


# --------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
def test_round_trip_builtin_components(tmp_path: Path, suffix: str) -> None:
    original = builtin_pipeline(tmp_path)
    spec_path = tmp_path / f"pipeline{suffix}"
    original.save(spec_path)

    raw = read_spec_file(spec_path)
    assert raw["version"] == 1
    assert "created_utc" in raw["metadata"]
    assert raw["source"] == {
        "name": "SyntheticArrays",
        "module": "curator_worker.components.sources",
        "params": {"count": 4, "seed": 7, "size": 8, "items_per_index": 2},
    }
    assert [f["name"] for f in raw["filters"]] == ["FieldStats"]
    assert raw["sink"]["module"] == "curator_worker.components.sinks"
    if suffix == ".json":
        json.loads(spec_path.read_text())
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

    loaded = Pipeline.load(spec_path)
    assert isinstance(loaded, Pipeline)
    assert [type(c) for c in components(loaded)] == [SyntheticArrays, FieldStats, NpzPerIndex]
    assert [c.init_params for c in components(loaded)] == [
        c.init_params for c in components(original)
    ]
    assert len(loaded) == len(original) == 4
    assert loaded.to_spec()["source"] == original.to_spec()["source"]
    assert spec_hash(loaded.to_spec()) == spec_hash(original.to_spec())

    stats = tmp_path / "out" / "stats.json"
    first = run_pipeline(original)
    first_arrays = outputs(first)
    first_stats = stats.read_text()
    for paths in first:
        Path(paths[0]).unlink()
    stats.unlink()

    second = run_pipeline(loaded)
    assert second == first
    second_arrays = outputs(second)
    for a, b in zip(first_arrays, second_arrays, strict=True):
        assert sorted(a) == sorted(b)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    assert stats.read_text() == first_stats
    assert json.loads(first_stats)["items"] == 8


def test_round_trip_user_components(tmp_path: Path, user_modules: Path) -> None:
    import cw_spec_user_components as user  # type: ignore[import-not-found]

    original = (
        user.Modes(3, mode="slow", flag=True, scale=2.5)
        .filter(user.Passthrough())
        .write(user.Untyped(output_dir="o", extra_option=[1, 2]))
    )
    path = tmp_path / "user.yaml"
    original.save(path)
    loaded = Pipeline.load(path)
    assert [c.init_params for c in components(loaded)] == [
        {"count": 3, "mode": "slow", "flag": True, "scale": 2.5},
        {},
        {"output_dir": "o", "extra_option": [1, 2]},
    ]
    assert loaded.sink.extra == {"extra_option": [1, 2]}
    assert run_pipeline(loaded) == run_pipeline(original) == [["o/x0"], ["o/x1"], ["o/x2"]]


def test_save_overwrites_an_existing_spec(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("old garbage: [")
    builtin_pipeline(tmp_path).save(path)
    assert Pipeline.load(path).source.count == 4


def test_physicsnemo_style_spec_with_metadata_loads(tmp_path: Path) -> None:
    path = tmp_path / "physicsnemo.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            version: 1
            metadata:
              created_utc: "2026-11-22T10:00:00Z"
              curator_version: 0.3.0
              notes: [anything, {{goes: here}}]
            source:
              name: SyntheticArrays
              module: curator_worker.components.sources
              params: {{count: 10, seed: 7}}
            filters:
              - name: FieldStats
                module: curator_worker.components.filters
                params: {{output: {tmp_path}/out/stats.json}}
            sink:
              name: NpzPerIndex
              module: curator_worker.components.sinks
              params: {{output_dir: {tmp_path}/out/arrays}}
            """
        )
    )
    p = Pipeline.load(path)
    assert len(p) == 10
    assert p.source.init_params == {"count": 10, "seed": 7}
    assert p.filters[0].output == f"{tmp_path}/out/stats.json"
    assert p[9] == [f"{tmp_path}/out/arrays/item_00000009.npz"]


@pytest.mark.parametrize("filters", ["[]", "null", None], ids=["empty", "null", "absent"])
def test_spec_without_filters_loads(tmp_path: Path, filters: str | None) -> None:
    text = (
        "source: {name: SyntheticArrays, module: curator_worker.components.sources,"
        " params: {count: 2}}\n"
        f"sink: {{name: NpzPerIndex, module: curator_worker.components.sinks,"
        f" params: {{output_dir: {tmp_path}}}}}\n"
    )
    if filters is not None:
        text += f"filters: {filters}\n"
    path = tmp_path / "p.yaml"
    path.write_text(text)
    p = Pipeline.load(path)
    assert p.filters == () and len(p) == 2


def test_class_found_by_python_name_too(tmp_path: Path) -> None:
    spec = {
        "source": {"name": "SyntheticArrays", "module": "curator_worker.components",
                   "params": {"count": 1}},
        "sink": {"name": "NpzPerIndex", "module": "curator_worker.components",
                 "params": {"output_dir": str(tmp_path)}},
    }
    p = Pipeline.load(write_spec(tmp_path / "p.json", spec))
    assert isinstance(p.source, SyntheticArrays)


# --------------------------------------------------------------------------- coercion


def test_params_are_coerced_by_param_type(tmp_path: Path) -> None:
    spec = {
        "version": 1,
        "source": {
            "name": "SyntheticArrays",
            "module": "curator_worker.components.sources",
            "params": {"count": "10", "seed": 3.0, "size": " 4 ", "work_ms": "0.5",
                       "sleep_ms": 0, "fields": "a,b"},
        },
        "sink": {"name": "NpzPerIndex", "module": "curator_worker.components.sinks",
                 "params": {"output_dir": str(tmp_path), "prefix": 12}},
    }
    p = build_pipeline(spec, "coerce.yaml")
    assert p.source.init_params == {
        "count": 10, "seed": 3, "size": 4, "work_ms": 0.5, "sleep_ms": 0.0, "fields": "a,b",
    }
    params = p.source.init_params
    assert type(params["count"]) is int and type(params["seed"]) is int
    assert type(params["work_ms"]) is float and type(params["sleep_ms"]) is float
    assert len(p) == 10
    assert p.sink.init_params == {"output_dir": str(tmp_path), "prefix": "12"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("yes", True), ("true", True), ("TRUE", True), ("on", True), ("1", True),
        (" True ", True), (1, True), (True, True),
        ("no", False), ("false", False), ("off", False), ("0", False), (0, False),
        (False, False),
    ],
    ids=repr,
)
def test_bool_params_accept_bool_strings(
    tmp_path: Path, user_modules: Path, value: Any, expected: bool
) -> None:
    spec = {
        "source": {"name": "Modes", "module": USER_MODULE,
                   "params": {"count": 2, "flag": value}},
        "sink": {"name": "Untyped", "module": USER_MODULE, "params": {"output_dir": "o"}},
    }
    p = build_pipeline(spec, "bools.yaml")
    assert p.source.flag is expected


def test_untyped_component_params_pass_through(user_modules: Path) -> None:
    spec = {
        "source": {"name": "Modes", "module": USER_MODULE, "params": {"count": "2"}},
        "sink": {"name": "Untyped", "module": USER_MODULE,
                 "params": {"output_dir": 5, "anything": {"k": [1]}}},
    }
    p = build_pipeline(spec, "untyped.yaml")
    assert p.sink.output_dir == 5  # no Param.type: left as given
    assert p.sink.extra == {"anything": {"k": [1]}}
    assert p.source.count == 2


# --------------------------------------------------------------------------- every SpecError


@dataclass
class Case:
    """One broken spec: how to make it and what its error must say."""

    make: Callable[[Path], Path]
    must_contain: list[str] = field(default_factory=list)
    component: str | None = None
    allow: str | None = None  # CURATOR_ALLOWED_MODULES


def good_spec(tmp_path: Path) -> dict[str, Any]:
    return {
        "version": 1,
        "metadata": {"created_utc": "2026-01-01T00:00:00Z"},
        "source": {"name": "SyntheticArrays", "module": "curator_worker.components.sources",
                   "params": {"count": 3}},
        "filters": [{"name": "FieldStats", "module": "curator_worker.components.filters",
                     "params": {"output": str(tmp_path / "stats.json")}}],
        "sink": {"name": "NpzPerIndex", "module": "curator_worker.components.sinks",
                 "params": {"output_dir": str(tmp_path / "arrays")}},
    }


def edit(change: Callable[[dict[str, Any]], None], suffix: str = ".yaml") -> Callable[[Path], Path]:
    def make(tmp_path: Path) -> Path:
        spec = good_spec(tmp_path)
        change(spec)
        return write_spec(tmp_path / f"broken_spec{suffix}", spec)

    return make


def text(content: str, suffix: str = ".yaml") -> Callable[[Path], Path]:
    def make(tmp_path: Path) -> Path:
        path = tmp_path / f"broken_spec{suffix}"
        path.write_text(content)
        return path

    return make


def setitem(*keys: Any, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(spec: dict[str, Any]) -> None:
        target = spec
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return change


def delitem(*keys: Any) -> Callable[[dict[str, Any]], None]:
    def change(spec: dict[str, Any]) -> None:
        target = spec
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]

    return change


def source_entry(name: str, module: str, **params: Any) -> Callable[[dict[str, Any]], None]:
    return setitem("source", value={"name": name, "module": module, "params": params})


CASES: dict[str, Case] = {
    "yaml-syntax": Case(
        text(
            "version: 1\nsource:\n  name: SyntheticArrays\n  module: [unclosed\n"
            "sink: {name: x}\n"
        ),
        ["YAML syntax error", "line 5", "Fix the YAML"],
    ),
    "yaml-bad-indent": Case(
        text("version: 1\nsource: x\n  sink: y\n"), ["YAML syntax error", "line 3", "Fix the YAML"]
    ),
    "json-syntax": Case(
        text('{\n  "version": 1,,\n  "source": {}\n}\n', ".json"),
        ["JSON syntax error", "line 2", "Fix the JSON"],
    ),
    "file-not-found": Case(lambda tmp: tmp / "broken_spec_missing.yaml", ["not found", "Check"]),
    "top-level-list": Case(text("- source\n- sink\n"), ["must be a mapping", "'source'"]),
    "top-level-scalar-json": Case(text("42", ".json"), ["must be a mapping", "'sink'"]),
    "empty-file": Case(text(""), ["must be a mapping"]),
    "unknown-top-level-key": Case(
        edit(setitem("sinks", value={})),
        ["unknown top-level key", "sinks",
         "A spec has version, metadata, source, filters and sink"],
    ),
    "unsupported-version": Case(
        edit(setitem("version", value=2)), ["version 2", "not supported", "version 1"]
    ),
    "missing-source": Case(edit(delitem("source")), ["no 'source'", "Add a source entry"]),
    "missing-sink": Case(edit(delitem("sink")), ["no 'sink'", "Add a sink entry"]),
    "null-sink": Case(edit(setitem("sink", value=None)), ["no 'sink'", "Add a sink entry"]),
    "filters-not-a-list": Case(
        edit(setitem("filters", value={"name": "FieldStats"})),
        ["'filters' must be a list"],
    ),
    "component-not-a-mapping": Case(
        edit(setitem("source", value="SyntheticArrays")),
        ["source", "must be a mapping with 'name', 'module' and 'params'"],
    ),
    "filter-not-a-mapping": Case(
        edit(setitem("filters", value=["FieldStats"])),
        ["filters[0]", "must be a mapping with 'name', 'module' and 'params'"],
    ),
    "component-unknown-key": Case(
        edit(setitem("sink", "parms", value={})),
        ["sink", "unknown key(s) parms", "only name, module, params"],
    ),
    "missing-name": Case(
        edit(delitem("source", "name")), ["source", "'name' is missing", "class name"]
    ),
    "missing-module": Case(
        edit(delitem("filters", 0, "module")),
        ["filters[0]", "'module' is missing", "Give the module"],
        component="FieldStats",
    ),
    "unknown-module": Case(
        edit(setitem("sink", "module", value="cw_no_such_module_xyz")),
        ["cannot import module 'cw_no_such_module_xyz'", "PYTHONPATH"],
        component="NpzPerIndex",
    ),
    "module-import-raises": Case(
        edit(source_entry("Whatever", BROKEN_MODULE)),
        [f"importing module '{BROKEN_MODULE}' failed", "RuntimeError: cannot start",
         "imports cleanly"],
        component="Whatever",
    ),
    "unknown-class": Case(
        edit(setitem("source", "name", value="SyntheticArray")),
        ["no class named 'SyntheticArray'", "Did you mean 'SyntheticArrays'?", "FileGlob"],
        component="SyntheticArray",
    ),
    "unknown-user-class": Case(
        edit(source_entry("Mode", USER_MODULE, count=1)),
        ["no class named 'Mode'", "Did you mean 'Modes'?"],
        component="Mode",
    ),
    "sink-given-as-source": Case(
        edit(source_entry("NpzPerIndex", "curator_worker.components.sinks", output_dir="o")),
        ["'NpzPerIndex' is a sink", "a source is needed", "Use a Source subclass"],
        component="NpzPerIndex",
    ),
    "source-given-as-filter": Case(
        edit(setitem("filters", value=[{"name": "SyntheticArrays",
                                        "module": "curator_worker.components.sources"}])),
        ["filters[0]", "is a source", "Use a Filter subclass"],
        component="SyntheticArrays",
    ),
    "not-a-component": Case(
        edit(source_entry("Param", "curator_worker.components.sources")),
        ["not a pipeline component", "Use a Source subclass"],
        component="Param",
    ),
    "abstract-class": Case(
        edit(source_entry("HalfDone", USER_MODULE)),
        ["is abstract", "__getitem__", "Name a concrete class"],
        component="HalfDone",
    ),
    "missing-required-param": Case(
        edit(setitem("source", "params", value={"seed": 1})),
        ["missing required param 'count'", "Number of indices", "Add it under params"],
        component="SyntheticArrays",
    ),
    "missing-required-untyped-param": Case(
        edit(setitem("sink", value={"name": "Untyped", "module": USER_MODULE})),
        ["missing required param 'output_dir'", "Add it under params"],
        component="Untyped",
    ),
    "unknown-param": Case(
        edit(setitem("source", "params", value={"cout": 3})),
        ["unknown param 'cout'", "Did you mean 'count'?", "Valid params: count, seed"],
        component="SyntheticArrays",
    ),
    "unknown-filter-param": Case(
        edit(setitem("filters", 0, "params", "outptu", value="x")),
        ["filters[0]", "unknown param 'outptu'", "Did you mean 'output'?"],
        component="FieldStats",
    ),
    "wrong-type-int": Case(
        edit(setitem("source", "params", "count", value="abc")),
        ["param 'count' must be int", "'abc'", "Fix its value"],
        component="SyntheticArrays",
    ),
    "wrong-type-fractional-int": Case(
        edit(setitem("source", "params", "count", value=2.5)),
        ["param 'count' must be int", "Fix its value"],
        component="SyntheticArrays",
    ),
    "wrong-type-float": Case(
        edit(setitem("source", "params", "work_ms", value="fast")),
        ["param 'work_ms' must be float", "Fix its value"],
        component="SyntheticArrays",
    ),
    "wrong-type-bool": Case(
        edit(source_entry("Modes", USER_MODULE, count=1, flag="maybe")),
        ["param 'flag' must be bool", "'maybe'", "Fix its value"],
        component="Modes",
    ),
    "wrong-type-str": Case(
        edit(setitem("sink", "params", "output_dir", value=["a", "b"])),
        ["param 'output_dir' must be str", "Fix its value"],
        component="NpzPerIndex",
    ),
    "required-param-null": Case(
        edit(setitem("source", "params", "count", value=None)),
        ["param 'count' must be int", "Fix its value"],
        component="SyntheticArrays",
    ),
    "choices-violated": Case(
        edit(source_entry("Modes", USER_MODULE, count=1, mode="medium")),
        ["param 'mode' is 'medium'", "choose one of 'fast', 'slow'"],
        component="Modes",
    ),
    "constructor-raises": Case(
        edit(source_entry("FileGlob", "curator_worker.components.sources",
                          pattern="*.nothing-matches", root=".")),
        ["building it failed", "ValueError", "no files match", "Fix its params"],
        component="FileGlob",
    ),
    "constructor-rejects-value": Case(
        edit(setitem("source", "params", "count", value=-1)),
        ["building it failed", "count must be >= 0", "Fix its params"],
        component="SyntheticArrays",
    ),
    "params-not-a-mapping": Case(
        edit(setitem("source", "params", value=[10])),
        ["'params' must be a mapping"],
        component="SyntheticArrays",
    ),
    "module-not-allowed": Case(
        edit(source_entry("Modes", USER_MODULE, count=1)),
        [f"module '{USER_MODULE}' is not on the allow-list", "CURATOR_ALLOWED_MODULES"],
        component="Modes",
        allow="some_other_package, another.pkg",
    ),
    "module-prefix-is-not-a-package-prefix": Case(
        edit(source_entry("Modes", USER_MODULE, count=1)),
        ["not on the allow-list", "CURATOR_ALLOWED_MODULES"],
        component="Modes",
        allow="cw_spec_user",
    ),
}


@pytest.mark.parametrize("case_id", list(CASES), ids=list(CASES))
def test_spec_errors_are_one_line_with_file_component_and_fix(
    case_id: str, tmp_path: Path, user_modules: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = CASES[case_id]
    monkeypatch.chdir(tmp_path)
    if case.allow is not None:
        monkeypatch.setenv("CURATOR_ALLOWED_MODULES", case.allow)
    path = case.make(tmp_path)
    with pytest.raises(SpecError) as info:
        Pipeline.load(path)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message, message
    assert message.startswith(str(path)), message
    assert path.name in message
    if case.component is not None:
        assert case.component in message, message
    for fragment in case.must_contain:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert message.rstrip().endswith((".", "?")), message
    # the same spec given as a dict names the origin given
    if path.exists() and case_id not in {"yaml-syntax", "yaml-bad-indent", "json-syntax",
                                         "top-level-list", "top-level-scalar-json",
                                         "empty-file"}:
        with pytest.raises(SpecError, match="from-dict"):
            build_pipeline(read_spec_file(path), "from-dict")


def test_spec_error_raised_before_any_component_is_built(
    tmp_path: Path, user_modules: Path
) -> None:
    # the sink is broken; the source must not have run (and there is no output at all)
    spec = good_spec(tmp_path)
    spec["sink"]["params"] = {"output_dir": str(tmp_path / "arrays"), "prefx": "a"}
    with pytest.raises(SpecError, match="sink NpzPerIndex"):
        build_pipeline(spec, "x.yaml")
    assert not (tmp_path / "arrays").exists()


def test_allow_list_keeps_builtins_and_allows_listed_prefixes(
    tmp_path: Path, user_modules: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    builtin = write_spec(tmp_path / "builtin.yaml", good_spec(tmp_path))
    user_spec = good_spec(tmp_path)
    user_spec["source"] = {"name": "Modes", "module": USER_MODULE, "params": {"count": 2}}
    user = write_spec(tmp_path / "user.yaml", user_spec)

    monkeypatch.setenv("CURATOR_ALLOWED_MODULES", "some_other_package")
    assert len(Pipeline.load(builtin)) == 3  # the project's own components stay allowed
    with pytest.raises(SpecError, match="allow-list"):
        Pipeline.load(user)

    for allowed in (USER_MODULE, f"x, {USER_MODULE} ,y"):
        monkeypatch.setenv("CURATOR_ALLOWED_MODULES", allowed)
        assert len(Pipeline.load(user)) == 2
        assert len(Pipeline.load(builtin)) == 3

    monkeypatch.setenv("CURATOR_ALLOWED_MODULES", "   ")  # blank: no allow-list
    assert len(Pipeline.load(user)) == 2


@pytest.mark.parametrize(
    ("module", "prefixes", "allowed"),
    [
        ("pkg", ("pkg",), True),
        ("pkg.sub.mod", ("pkg",), True),
        ("pkg.sub", ("pkg.",), True),
        ("pkgother", ("pkg",), False),
        ("other", ("pkg",), False),
        ("curator_worker.components.sources", ("pkg",), True),
        ("curator_worker.components", (), True),
        ("curator_worker.componentsx", ("pkg",), False),
        ("curator_worker.store", ("pkg",), False),
        ("anything", None, True),
    ],
    ids=str,
)
def test_module_allow_list_prefix_semantics(
    module: str, prefixes: tuple[str, ...] | None, allowed: bool
) -> None:
    assert _module_allowed(module, prefixes) is allowed


def test_allowed_module_prefixes_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    assert allowed_module_prefixes() is None
    monkeypatch.setenv("CURATOR_ALLOWED_MODULES", " a.b , ,c ")
    assert allowed_module_prefixes() == ("a.b", "c")


def test_not_allowed_module_is_never_imported(
    tmp_path: Path, user_modules: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = good_spec(tmp_path)
    spec["source"] = {"name": "Whatever", "module": BROKEN_MODULE}
    monkeypatch.setenv("CURATOR_ALLOWED_MODULES", "nothing_here")
    with pytest.raises(SpecError, match="allow-list"):
        build_pipeline(spec, "s.yaml")
    assert BROKEN_MODULE not in sys.modules


# --------------------------------------------------------------------------- saving errors


def test_saving_a_class_defined_in_a_function_raises(tmp_path: Path) -> None:
    class LocalSource(Source[int]):
        name = "LocalSource"

        def __len__(self) -> int:
            return 1

        def __getitem__(self, index: int) -> Iterator[int]:
            yield index

    p = LocalSource().write(NpzPerIndex(output_dir=str(tmp_path)))
    path = tmp_path / "local.yaml"
    with pytest.raises(SpecError, match="function.*importable module") as info:
        p.save(path)
    assert "\n" not in str(info.value)
    assert "LocalSource" in str(info.value)
    assert not path.exists()


def test_saving_a_class_defined_in_main_raises(tmp_path: Path) -> None:
    def call(self: Any, items: Iterator[Any], index: int) -> list[str]:
        return []

    MainSink = type("MainSink", (Sink,), {"__call__": call, "__module__": "__main__"})
    p = SyntheticArrays(count=1).write(MainSink())
    with pytest.raises(SpecError, match="__main__"):
        pipeline_to_spec(p)


def test_saving_a_lambda_sink_raises(tmp_path: Path) -> None:
    p = Pipeline(SyntheticArrays(count=1), sink=lambda items, index: [])
    with pytest.raises(SpecError, match="Sink subclasses"):
        p.save(tmp_path / "x.yaml")


def test_saving_an_unserialisable_param_raises(tmp_path: Path, user_modules: Path) -> None:
    import cw_spec_user_components as user  # type: ignore[import-not-found]

    p = user.Modes(1).write(user.Untyped(output_dir=object()))
    with pytest.raises(SpecError, match="cannot be saved in a spec"):
        p.save(tmp_path / "x.json")


def test_saving_without_a_sink_raises(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match=r"\.write\("):
        Pipeline(SyntheticArrays(count=1)).save(tmp_path / "x.yaml")


def test_saving_converts_paths_and_numpy_scalars(tmp_path: Path) -> None:
    p = SyntheticArrays(count=np.int64(2), seed=np.int32(1)).write(
        NpzPerIndex(output_dir=tmp_path / "arrays")
    )
    spec = pipeline_to_spec(p)
    assert spec["source"]["params"] == {"count": 2, "seed": 1}
    assert type(spec["source"]["params"]["count"]) is int
    assert spec["sink"]["params"] == {"output_dir": str(tmp_path / "arrays")}
    path = tmp_path / "p.json"
    p.save(path)
    assert Pipeline.load(path)[1] == [str(tmp_path / "arrays" / "item_00000001.npz")]


def test_file_glob_round_trip(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for k in range(3):
        np.save(data / f"f{k}.npy", np.arange(k + 1))
    p = FileGlob(pattern="*.npy", root=str(data)).write(NpzPerIndex(output_dir=str(tmp_path / "o")))
    p.save(tmp_path / "glob.yaml")
    loaded = Pipeline.load(tmp_path / "glob.yaml")
    assert loaded.source.files == p.source.files


# --------------------------------------------------------------------------- spec_hash


def test_spec_hash_ignores_metadata_and_tracks_params(tmp_path: Path) -> None:
    spec = good_spec(tmp_path)
    h = spec_hash(spec)
    assert len(h) == 16 and int(h, 16) >= 0

    other_metadata = {**spec, "metadata": {"created_utc": "2030-01-01T00:00:00Z", "x": 1}}
    assert spec_hash(other_metadata) == h
    assert spec_hash({k: v for k, v in spec.items() if k != "metadata"}) == h
    reordered = dict(reversed(list(spec.items())))
    assert spec_hash(reordered) == h

    changed = json.loads(json.dumps(spec))
    changed["source"]["params"]["count"] = 4
    assert spec_hash(changed) != h

    changed_filter = json.loads(json.dumps(spec))
    changed_filter["filters"][0]["params"]["fields"] = "pressure"
    assert spec_hash(changed_filter) != h


def test_saved_specs_hash_equal_across_saves(tmp_path: Path) -> None:
    p = builtin_pipeline(tmp_path)
    a, b = pipeline_to_spec(p), pipeline_to_spec(p)
    assert spec_hash(a) == spec_hash(b)
    assert spec_hash(pipeline_to_spec(p.write(NpzPerIndex(output_dir="elsewhere")))) != spec_hash(a)
