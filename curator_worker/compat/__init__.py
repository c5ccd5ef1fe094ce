"""The wall around Celery's and kombu's internals: every private or undocumented thing we rely on.

Everything else in the project uses Celery and kombu only through their documented API
(apps, signatures, signals, settings, ``celery.exceptions``). What goes beyond it is here,
as small named functions and classes whose docstrings say which internal they rely on and in
which versions it was checked; ``tests/unit/test_celery_compat.py`` and
``tests/integration/test_celery_compat.py`` check each of them against the installed
versions, so an upgrade that changes one fails there, naming what changed.
``docs/celery-internals.md`` describes each one and why we need it.

:mod:`curator_worker.compat.celery`
    The result backend, the task message a template publish copies, the ``argsrepr``
    header, ``task-sent`` events, the worker consumer's task handlers, the worker node
    read at ``worker_ready``, the worker's log format.
:mod:`curator_worker.compat.kombu`
    kombu's Redis transport: its key names, the ``unacked_index`` and what its scores mean,
    the JSON envelope of a message, the redis-py client a producer's channel publishes with.

Flower's internals stay in :mod:`curator_worker.flower_guard`, a wall of its own (it runs
in Flower's process and must import nothing of ours that imports Celery).

The upper version bounds in ``pyproject.toml`` (``celery<5.8``, ``kombu<5.8``,
``redis<9``, ``flower<2.3``) keep an untested release out; raise them after the
contract tests pass with it.
"""

from __future__ import annotations

#: Versions every internal here was checked against.
CHECKED_VERSIONS = {"celery": "5.7.0", "kombu": "5.7.0", "redis": "8.1.0"}
