"""The producer side: plan and submit jobs (``curator-submit``), watch them (``curator-jobs``).

The names below are imported on first use (PEP 562), so that the command-line entry points
(:mod:`producer.cli`) start without loading Celery.
"""

import importlib
from typing import Any

_EXPORTS = {"SubmittedJob": "producer.submit", "plan_job": "producer.submit",
            "submit_job": "producer.submit", "wait_for_job": "producer.wait"}


def __getattr__(name: str) -> Any:
    """``SubmittedJob``, ``plan_job``, ``submit_job`` and ``wait_for_job``, on first use."""
    home = _EXPORTS.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


__all__ = ["SubmittedJob", "plan_job", "submit_job", "wait_for_job"]
