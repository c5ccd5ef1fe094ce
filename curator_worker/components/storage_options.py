"""``storage_options`` of file components: fsspec options as a spec gives them, checked
for credentials written in clear (refused, naming the key, never the value) and resolved
(``"${VARIABLE}"`` values read from the environment of the process that opens the file).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from typing import Any

_ENV_REFERENCE = re.compile(r"^\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)\}$")
#: ``storage_options`` keys (at any depth) whose values are credentials: refused in clear.
SECRET_KEYS = frozenset({
    "key", "secret", "token", "password", "passwd", "access_key", "secret_key",
    "access_key_id", "secret_access_key", "session_token", "security_token",
    "aws_access_key_id", "aws_secret_access_key", "aws_session_token", "account_key",
    "sas_token", "client_secret", "credential", "credentials", "private_key",
})


def _walk_secrets(options: Mapping[str, Any], where: str) -> Iterator[str]:
    """Dotted names of the credential keys in ``options`` whose values are given in clear."""
    for key, value in options.items():
        name = f"{where}.{key}" if where else str(key)
        if isinstance(value, Mapping):
            yield from _walk_secrets(value, name)
        elif str(key).lower() in SECRET_KEYS and value not in (None, ""):
            if not (isinstance(value, str) and _ENV_REFERENCE.match(value)):
                yield name


def check_storage_options(options: Mapping[str, Any] | None, owner: str) -> dict[str, Any]:
    """Validate ``storage_options`` of a component; return them as a dict (unexpanded).

    Parameters
    ----------
    options : Mapping or None
        fsspec options, as a spec gives them.
    owner : str
        The component's name, for messages.

    Returns
    -------
    dict
        A copy of ``options`` (``{}`` for None).

    Raises
    ------
    ValueError
        If ``options`` is not a mapping, or holds a credential in clear (the message names
        the key, never the value).

    Examples
    --------
    >>> check_storage_options({"secret": "${AWS_SECRET_ACCESS_KEY}"}, "JsonlFiles")
    {'secret': '${AWS_SECRET_ACCESS_KEY}'}
    """
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise ValueError(
            f"{owner}: storage_options must be a mapping of fsspec options, "
            f"got {type(options).__name__}."
        )
    clear = sorted(_walk_secrets(options, ""))
    if clear:
        raise ValueError(
            f"{owner}: storage_options {', '.join(repr(k) for k in clear)} hold a credential "
            "in clear, and a spec is stored in the job store. Write it as '${ENV_VARIABLE}' "
            "(read from each process's environment) or leave it out so fsspec/boto read the "
            "environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or a profile."
        )
    return dict(options)


def _expand(value: Any, where: str, owner: str) -> Any:
    if isinstance(value, Mapping):
        return {k: _expand(v, f"{where}.{k}" if where else str(k), owner)
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_expand(v, where, owner) for v in value]
    if isinstance(value, str):
        found = _ENV_REFERENCE.match(value)
        if found:
            name = found["name"]
            if name not in os.environ:
                raise ValueError(
                    f"{owner}: storage_options {where!r} refers to ${{{name}}}, which is not "
                    "set in this process's environment. Set it where the job runs."
                )
            return os.environ[name]
    return value


def resolve_storage_options(options: Mapping[str, Any] | None, owner: str) -> dict[str, Any]:
    """``options`` with every ``"${VARIABLE}"`` value read from the environment.

    Raises
    ------
    ValueError
        If a referenced variable is not set (named in the message), or as
        :func:`check_storage_options`.

    Examples
    --------
    >>> import os
    >>> os.environ["CW_DOC_ENDPOINT"] = "http://127.0.0.1:9000"
    >>> resolve_storage_options({"client_kwargs": {"endpoint_url": "${CW_DOC_ENDPOINT}"}}, "X")
    {'client_kwargs': {'endpoint_url': 'http://127.0.0.1:9000'}}
    """
    return _expand(check_storage_options(options, owner), "", owner)
