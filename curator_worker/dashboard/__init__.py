"""A live job dashboard: ``curator-jobs dashboard``.

A small Tornado server reads the job store and serves one page (plain HTML, JavaScript and
CSS in ``static/``, no build step) that polls a JSON API every second, plus job-level
Prometheus metrics on ``/metrics``. :mod:`~curator_worker.dashboard.views` shapes what is
shown, :mod:`~curator_worker.dashboard.metrics` exports it, and
:mod:`~curator_worker.dashboard.server` serves both with the same access rules as
``curator-worker flower``.
"""

from __future__ import annotations

from curator_worker.dashboard.server import (
    AUTH_ENV,
    DEFAULT_ADDRESS,
    DEFAULT_PORT,
    DashboardConfig,
    is_loopback,
    make_app,
    parse_credentials,
    serve,
)
from curator_worker.dashboard.views import JobViews

__all__ = ["AUTH_ENV", "DEFAULT_ADDRESS", "DEFAULT_PORT", "DashboardConfig", "JobViews",
           "is_loopback", "make_app", "parse_credentials", "serve"]
