"""Reading a spec file within limits: a regular file, at most :data:`MAX_SPEC_BYTES`, YAML
without unsafe tags, bounded nesting, size and aliases (a crafted file costs no more than a
real one), as one :class:`~curator_worker.errors.SpecError` line when it is not."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import yaml

from curator_worker.errors import SpecError

#: Largest spec file read (bytes): a spec is a few kilobytes; parsing more costs seconds.
MAX_SPEC_BYTES = 1024 * 1024
#: Deepest nesting of lists and mappings in a spec.
MAX_SPEC_DEPTH = 64
#: Most values in a spec, counting each use of a YAML alias in full (an alias bomb).
MAX_SPEC_NODES = 100_000
#: Most YAML aliases (``*name``) in a spec.
MAX_SPEC_ALIASES = 100


class LimitedLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses deep nesting and many aliases as it composes."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:  # noqa: D102 - PyYAML's hook
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_SPEC_ALIASES:
                raise SpecTooBig(f"more than {MAX_SPEC_ALIASES} YAML aliases")
        self._depth += 1
        try:
            if self._depth > MAX_SPEC_DEPTH:
                raise SpecTooBig(f"nested deeper than {MAX_SPEC_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class SpecTooBig(Exception):
    """A spec beyond :data:`MAX_SPEC_DEPTH`, :data:`MAX_SPEC_NODES` or the alias limit."""


def check_size(data: Any) -> None:
    """Raise :class:`SpecTooBig` if ``data``, expanded, is too deep or has too many values."""
    count = 0
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        count += 1
        if count > MAX_SPEC_NODES:
            raise SpecTooBig(f"more than {MAX_SPEC_NODES} values (YAML aliases count in full)")
        if depth > MAX_SPEC_DEPTH:
            raise SpecTooBig(f"nested deeper than {MAX_SPEC_DEPTH} levels")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
            stack.extend((k, depth + 1) for k in value)
        elif isinstance(value, list | tuple):
            stack.extend((v, depth + 1) for v in value)


def _read_regular_file(path: Path) -> bytes:
    """At most :data:`MAX_SPEC_BYTES` of ``path``, which must be a regular file.

    Opened without blocking (a FIFO with no writer would hang a plain open) and checked on
    the open descriptor, so a device, FIFO or directory is refused before any read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise SpecError(f"{path}: spec file not found. Check the path.") from None
    except OSError as exc:
        raise SpecError(f"{path}: cannot read the spec ({exc.strerror}).") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
                else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "not a plain file")
        raise SpecError(f"{path}: the spec is {kind}, not a regular file. Give a YAML or "
                        "JSON file.")
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(MAX_SPEC_BYTES + 1)
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError(
            f"{path}: the spec is larger than {MAX_SPEC_BYTES // 1024} KiB. A spec names "
            "components and their params; put bulk data in files the source reads."
        )
    return data


def read_spec_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse a spec file (YAML or JSON) into a dict, without building it.

    Only a regular file of at most :data:`MAX_SPEC_BYTES` is read; YAML is safe-loaded
    with at most :data:`MAX_SPEC_ALIASES` aliases, and no spec may nest deeper than
    :data:`MAX_SPEC_DEPTH` or hold more than :data:`MAX_SPEC_NODES` values.

    Raises
    ------
    SpecError
        If the file is missing, not a regular file, too large, not valid YAML/JSON, or
        too deep or too big once parsed.
    """
    path = Path(path)
    raw = _read_regular_file(path)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SpecError(
            f"{path}: the spec is not UTF-8 text (byte {exc.start}). Save it as UTF-8 YAML "
            "or JSON."
        ) from None
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            data = yaml.load(text, Loader=LimitedLoader)  # noqa: S506 - a SafeLoader
        check_size(data)
    except json.JSONDecodeError as exc:
        raise SpecError(
            f"{path}: JSON syntax error at line {exc.lineno}, column {exc.colno}: {exc.msg}. "
            "Fix the JSON."
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(f"{path}: YAML syntax error{where}: {problem}. Fix the YAML.") from None
    except SpecTooBig as exc:
        raise SpecError(f"{path}: the spec has {exc}. Simplify it.") from None
    except RecursionError:
        raise SpecError(
            f"{path}: the spec is nested deeper than {MAX_SPEC_DEPTH} levels. Simplify it."
        ) from None
    except (ValueError, TypeError, OverflowError) as exc:  # e.g. a YAML date 2026-13-45
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SpecError(f"{path}: a value cannot be read: {first}. Fix the spec.") from None
    if not isinstance(data, dict):
        raise SpecError(
            f"{path}: a spec must be a mapping with 'source', 'filters' and 'sink' keys, "
            f"got {type(data).__name__}."
        )
    return data
