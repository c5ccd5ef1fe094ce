"""Pipeline specs: how a pipeline travels to workers on other machines.

It needs no :class:`~curator_worker.contract.pipeline.Pipeline` at import: components are
recognised by their kind (:attr:`Component.component_kind`) and a pipeline is built with
the source's own builders, so ``Pipeline.save``/``Pipeline.load`` can use this module
without an import cycle. Reading a file within limits is :mod:`.spec_file`.

A spec is the YAML/JSON layout physicsnemo-curator saves::

    version: 1
    metadata: {created_utc: "2026-11-22T10:00:00Z"}   # informational, ignored on load
    source: {name: SyntheticArrays, module: curator_worker.components.sources, params: {count: 10}}
    filters:
      - {name: FieldStats, module: curator_worker.components.filters, params: {output: s.json}}
    sink: {name: NpzPerIndex, module: curator_worker.components.sinks, params: {output_dir: out}}

Workers never receive pickled code: they import ``module``, look the class up by its
``name`` attribute (or class name), coerce params by :attr:`Param.type` and build the
pipeline. Every mistake is a one-line :class:`SpecError` naming the file, the component and
the fix, raised before anything is enqueued.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import inspect
import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from curator_worker.config import allowed_module_prefixes
from curator_worker.contract.params import Component
from curator_worker.contract.spec_file import SpecTooBig, check_size, read_spec_file
from curator_worker.contract.spec_params import check_params
from curator_worker.errors import SpecError

if TYPE_CHECKING:
    from curator_worker.contract.pipeline import Pipeline

SPEC_VERSION = 1
#: Module prefixes always allowed: the project's own components.
BUILTIN_MODULE_PREFIXES = ("curator_worker.components",)
_TOP_LEVEL_KEYS = {"version", "metadata", "source", "filters", "sink"}
#: Keys of a component entry; physicsnemo-curator's own saver also writes ``class`` (the
#: class name, then ``name`` is a display name) and ``description`` (ignored on load).
_COMPONENT_KEYS = {"name", "module", "params", "class", "description"}
#: The kinds of component a spec names, in its order.
KINDS = ("source", "filter", "sink")


def kind_of(cls: Any) -> str | None:
    """``"source"``, ``"filter"`` or ``"sink"`` for a component class, else ``None``."""
    if isinstance(cls, type) and issubclass(cls, Component):
        return cls.component_kind or None
    return None


# --------------------------------------------------------------------------- saving



class UnknownClassError(SpecError):
    """A spec names a class its module does not have (here, in this process).

    Attributes
    ----------
    module, name : str
        The module and the class the spec names.
    module_file : str | None
        The file the module was imported from.
    """

    def __init__(self, message: str, module: str, name: str, module_file: str | None) -> None:
        super().__init__(message)
        self.module, self.name, self.module_file = module, name, module_file

def _jsonable(value: Any, where: str) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, list | tuple):
        return [_jsonable(v, where) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, where) for k, v in value.items()}
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        return _jsonable(item(), where)
    raise SpecError(
        f"{where}: param value {value!r} of type {type(value).__name__} cannot be saved in a "
        "spec. Use plain values (str, int, float, bool, lists, dicts)."
    )


def component_to_spec(component: Any, kind: str) -> dict[str, Any]:
    """The ``{name, module, params}`` entry of one component."""
    cls = type(component)
    label = f"{kind} {cls.__qualname__}"
    if kind_of(cls) != kind:
        raise SpecError(
            f"{label}: only {kind.capitalize()} subclasses can be saved in a spec "
            "(functions and lambdas run only on local backends)."
        )
    if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__:
        raise SpecError(
            f"{label}: the class is defined in "
            f"{'__main__' if cls.__module__ == '__main__' else 'a function'}, which workers "
            "cannot import. Move it to an importable module."
        )
    name = getattr(cls, "name", "") or cls.__name__
    params = _jsonable(component.init_params, label)
    return {"name": name, "module": cls.__module__, "params": params}


def pipeline_to_spec(pipeline: Pipeline) -> dict[str, Any]:
    """A spec dict for ``pipeline`` (``version``, ``metadata``, ``source``, ``filters``, ``sink``).

    Raises
    ------
    SpecError
        If a component cannot be imported by a worker (defined in ``__main__``, a lambda).
    """
    sink = pipeline.require_sink()
    return {
        "version": SPEC_VERSION,
        "metadata": {
            "created_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "created_by": "curator-worker",
        },
        "source": component_to_spec(pipeline.source, "source"),
        "filters": [component_to_spec(f, "filter") for f in pipeline.filters],
        "sink": component_to_spec(sink, "sink"),
    }


def save_spec(pipeline: Pipeline, path: str | os.PathLike[str]) -> None:
    """Write ``pipeline`` as a spec: JSON for ``.json``, YAML otherwise."""
    spec = pipeline_to_spec(pipeline)
    path = Path(path)
    if path.suffix.lower() == ".json":
        text = json.dumps(spec, indent=2) + "\n"
    else:
        text = yaml.safe_dump(spec, sort_keys=False)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def spec_hash(spec: Mapping[str, Any]) -> str:
    """A stable hash of what a spec builds (its ``metadata`` block excluded)."""
    body = {k: v for k, v in spec.items() if k != "metadata"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- loading


def _module_allowed(module: str, prefixes: tuple[str, ...] | None) -> bool:
    if prefixes is None:
        return True
    for prefix in (*BUILTIN_MODULE_PREFIXES, *prefixes):
        base = prefix.rstrip(".")  # "mypipe." allows the module mypipe itself too
        if module == base or module.startswith(base + "."):
            return True
    return False


def _find_class(module: Any, name: str) -> type | None:
    candidates = [
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj) and (getattr(obj, "name", None) == name or obj.__name__ == name)
    ]
    exact = [c for c in candidates if getattr(c, "name", None) == name]
    return (exact or candidates or [None])[0]


def build_component(
    entry: Any, kind: str, origin: str, position: str, prefixes: tuple[str, ...] | None
) -> Any:
    """Import, check and instantiate one ``{name, module, params}`` entry."""
    where = f"{origin}: {position}"
    if not isinstance(entry, Mapping):
        raise SpecError(f"{where}: must be a mapping with 'name', 'module' and 'params'.")
    extra = set(entry) - _COMPONENT_KEYS
    if extra:
        raise SpecError(
            f"{where}: unknown key(s) {', '.join(sorted(map(str, extra)))}; "
            "a component has only name, module, params (and class, description)."
        )
    name, module_name = entry.get("class") or entry.get("name"), entry.get("module")
    if not isinstance(name, str) or not name:
        raise SpecError(f"{where}: 'name' is missing. Give the component's class name.")
    if not isinstance(module_name, str) or not module_name:
        raise SpecError(f"{where} {name}: 'module' is missing. Give the module to import it from.")
    label = f"{where} {name} ({module_name})"
    params = entry.get("params") or {}
    if not isinstance(params, Mapping):
        raise SpecError(f"{label}: 'params' must be a mapping of param names to values.")
    if not _module_allowed(module_name, prefixes):
        raise SpecError(
            f"{label}: module '{module_name}' is not on the allow-list. Add its prefix to "
            "CURATOR_ALLOWED_MODULES on the workers and the producer."
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise SpecError(
            f"{label}: cannot import module '{module_name}' ({exc}). Install it or fix "
            "PYTHONPATH on every worker."
        ) from None
    except Exception as exc:  # noqa: BLE001 - the user's module failed to import
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise SpecError(
            f"{label}: importing module '{module_name}' failed: {type(exc).__name__}: {first}. "
            "Fix the module so it imports cleanly on every worker."
        ) from None
    cls = _find_class(module, name)
    if cls is None:
        available = sorted(
            getattr(o, "name", "") or o.__name__
            for o in vars(module).values()
            if kind_of(o) == kind and "component_kind" not in vars(o)  # not the base class
            and o.__module__ == module.__name__
        )
        close = difflib.get_close_matches(name, available, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        listing = f" Available: {', '.join(available)}." if available else ""
        raise UnknownClassError(
            f"{label}: no class named '{name}' in the module.{hint}{listing}",
            module_name, name, getattr(module, "__file__", None))
    if kind_of(cls) != kind:
        actual = kind_of(cls)
        is_a = f"a {actual}" if actual else "not a pipeline component"
        raise SpecError(
            f"{label}: '{name}' is {is_a}, but a {kind} is needed here. "
            f"Use a {kind.capitalize()} subclass."
        )
    if inspect.isabstract(cls):
        raise SpecError(
            f"{label}: '{name}' is abstract (missing "
            f"{', '.join(sorted(cls.__abstractmethods__))}). Name a concrete class."
        )
    kwargs = check_params(cls, params, label)
    try:
        return cls(**kwargs)
    except Exception as exc:  # noqa: BLE001 - the component rejected its params
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise SpecError(
            f"{label}: building it failed: {type(exc).__name__}: {first}. Fix its params."
        ) from None


def check_spec_layout(spec: Any, origin: str) -> None:
    """Validate the top-level layout of a spec (keys, version, types)."""
    if not isinstance(spec, Mapping):
        raise SpecError(f"{origin}: a spec must be a mapping, got {type(spec).__name__}.")
    try:
        check_size(spec)  # a spec dict from Python, not only from a file
    except SpecTooBig as exc:
        raise SpecError(f"{origin}: the spec has {exc}. Simplify it.") from None
    extra = set(spec) - _TOP_LEVEL_KEYS
    if extra:
        raise SpecError(
            f"{origin}: unknown top-level key(s) {', '.join(sorted(map(str, extra)))}. "
            "A spec has version, metadata, source, filters and sink."
        )
    version = spec.get("version", SPEC_VERSION)
    if version != SPEC_VERSION:
        raise SpecError(
            f"{origin}: spec version {version!r} is not supported; this release reads "
            f"version {SPEC_VERSION}."
        )
    if "source" not in spec:
        raise SpecError(f"{origin}: no 'source'. Add a source entry (name, module, params).")
    if "sink" not in spec or spec["sink"] is None:
        raise SpecError(f"{origin}: no 'sink'. Add a sink entry (name, module, params).")
    filters = spec.get("filters") or []
    if not isinstance(filters, list):
        raise SpecError(f"{origin}: 'filters' must be a list of components.")


def build_pipeline(
    spec: Mapping[str, Any],
    origin: str = "<spec>",
    *,
    track_metrics: bool = False,
) -> Pipeline:
    """Build a :class:`Pipeline` from a spec dict.

    Parameters
    ----------
    spec : Mapping
        The parsed spec.
    origin : str
        Where it came from (a file name), for error messages.
    track_metrics : bool
        Passed to the pipeline.

    Raises
    ------
    SpecError
        For any mistake, as one line naming ``origin``, the component and the fix.
    """
    check_spec_layout(spec, origin)
    prefixes = allowed_module_prefixes()
    source = build_component(spec["source"], "source", origin, "source", prefixes)
    filters = [
        build_component(entry, "filter", origin, f"filters[{n}]", prefixes)
        for n, entry in enumerate(spec.get("filters") or [])
    ]
    sink = build_component(spec["sink"], "sink", origin, "sink", prefixes)
    pipeline = source.write(sink)  # the source's builders: no Pipeline import needed here
    for f in filters:
        pipeline = pipeline.filter(f)
    pipeline.track_metrics = track_metrics
    return pipeline


def load_spec(path: str | os.PathLike[str]) -> Pipeline:
    """Read and build a spec file. See :func:`build_pipeline` for errors."""
    return build_pipeline(read_spec_file(path), str(path))
