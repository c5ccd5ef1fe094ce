"""A component's params as a spec gives them: checked against what its constructor takes
(its :meth:`~curator_worker.contract.params.Component.params`, else its signature),
coerced to each :class:`~curator_worker.contract.params.Param`'s type, bounded (no huge
integers, no deep or huge values), each mistake one :class:`SpecError` line naming the
component and the param."""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Mapping
from typing import Any

from curator_worker.contract.params import REQUIRED, Param, init_signature
from curator_worker.errors import SpecError


def coerce(value: Any, param: Param, label: str) -> Any:
    target = param.type
    bad = SpecError(
        f"{label}: param '{param.name}' must be {getattr(target, '__name__', target)}, "
        f"got {value!r}. Fix its value."
    )
    if value is None:
        if param.required:
            raise bad
        return None
    if target is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in {"true", "yes", "1", "on"}:
            return True
        if isinstance(value, str) and value.strip().lower() in {"false", "no", "0", "off"}:
            return False
        raise bad
    if target is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                raise bad from None
        raise bad
    if target is float:
        if isinstance(value, bool):
            raise bad
        try:
            return float(value)
        except (TypeError, ValueError, OverflowError):
            raise bad from None
    if target is str:
        if isinstance(value, str):
            return value
        if isinstance(value, bool | int | float):
            return str(value)
        raise bad
    if target in (list, tuple):
        if isinstance(value, list | tuple):
            return target(value)
        raise bad
    if target is dict:
        if isinstance(value, dict):
            return value
        raise bad
    if isinstance(target, type) and isinstance(value, target):
        return value
    try:
        return target(value)
    except Exception:  # noqa: BLE001 - any failure of a user's type is a spec mistake
        raise bad from None


#: Largest integer a param may hold: a 64-bit signed integer (what JSON readers keep exact).
MAX_PARAM_INT = 2**63 - 1


def check_value(value: Any, key: str, label: str) -> None:
    """Refuse NaN, infinities and integers beyond 64 bits anywhere in a param's value."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise SpecError(f"{label}: param '{key}' holds {item!r}. Use a finite number.")
        if isinstance(item, int) and not isinstance(item, bool) and abs(item) > MAX_PARAM_INT:
            raise SpecError(
                f"{label}: param '{key}' holds an integer beyond 64 bits ({str(item)[:12]}..."
                f"). Use a number of at most {MAX_PARAM_INT}."
            )
        if isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)


def signature_params(cls: type) -> list[Param]:
    """Params derived from ``__init__`` for components that declare no :meth:`params`."""
    out = []
    for p in list(init_signature(cls).parameters.values())[1:]:
        if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        default = REQUIRED if p.default is inspect.Parameter.empty else p.default
        out.append(Param(p.name, "", type=object, default=default))
    return out


def check_params(cls: type, given: Mapping[str, Any], label: str) -> dict[str, Any]:
    declared = list(cls.params()) if hasattr(cls, "params") else []
    typed = bool(declared)
    if not declared:
        declared = signature_params(cls)
    by_name = {p.name: p for p in declared}
    accepts_any = any(
        p.kind is inspect.Parameter.VAR_KEYWORD
        for p in init_signature(cls).parameters.values()
    )
    out: dict[str, Any] = {}
    for key, value in given.items():
        check_value(value, str(key), label)
        param = by_name.get(key)
        if param is None:
            if accepts_any and not typed:
                out[key] = value
                continue
            close = difflib.get_close_matches(key, list(by_name), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            valid = ", ".join(by_name) or "none"
            raise SpecError(
                f"{label}: unknown param '{key}'.{hint} Valid params: {valid}."
            )
        if param.type is object:
            out[key] = value
        else:
            out[key] = coerce(value, param, label)
            check_value(out[key], key, label)  # "nan" or "1e400" as a string
        if param.choices is not None and out[key] not in param.choices:
            raise SpecError(
                f"{label}: param '{key}' is {out[key]!r}; choose one of "
                f"{', '.join(map(repr, param.choices))}."
            )
    for param in declared:
        if param.required and param.name not in out:
            what = f" ({param.description})" if param.description else ""
            raise SpecError(
                f"{label}: missing required param '{param.name}'{what}. Add it under params."
            )
    return out
