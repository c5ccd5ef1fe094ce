"""Every Lua script the job store runs, one file each under ``store/lua/``, loaded once.

A script is where several keys must change together or not at all (a batch commit, a
compare-and-set of a job's state) or where a check and a write must not be separated by
another client (a lock released only by its holder). Each file's header names its keys,
its arguments and what it returns.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

import redis
from redis.commands.core import Script

#: The scripts, by name (``store/lua/<name>.lua``).
NAMES = ("begin_batch", "commit_batch", "set_state", "refresh_publishing", "release_lock",
         "renew_lock", "locked_hset")


@cache
def source(name: str) -> str:
    """The Lua text of script ``name``.

    Raises
    ------
    KeyError
        If there is no such script.
    """
    if name not in NAMES:
        raise KeyError(f"no Lua script {name!r} in the job store (known: {', '.join(NAMES)})")
    return resources.files("curator_worker.store").joinpath(f"lua/{name}.lua").read_text()


def register(client: redis.Redis, name: str) -> Script:
    """Script ``name`` registered on ``client``: called by SHA, loaded again when the
    server lost it (a restart)."""
    return client.register_script(source(name))
