"""Configuration: ``CURATOR_*`` environment variables mapped onto Celery's own settings.

This is the one place where our names meet Celery's. CLI flags override the environment
by building :class:`Settings` with explicit values.

=============================  ==========================================================
``CURATOR_BROKER_URL``         Broker (``redis://[:password@]host:6379/0``). Unset: the
                               producer runs the job on an embedded private cluster.
``CURATOR_RESULT_BACKEND``     Celery result backend (chord counters). Default: the broker
                               URL when it is Redis.
``CURATOR_JOB_STORE_URL``      Redis holding job records. Default: the result backend.
``CURATOR_QUEUE``              Queue batch tasks go to (default ``curator``).
``CURATOR_VISIBILITY_TIMEOUT`` Seconds before an unacknowledged task is redelivered
                               (default 3600). Must exceed the longest batch.
``CURATOR_JOB_TTL``            Seconds job records are kept after a job ends (default 7 days).
``CURATOR_ALLOWED_MODULES``    Comma-separated module prefixes specs may import
                               (default: any; the project's components are always allowed).
``CURATOR_TASK_EVENTS``        ``0`` turns off Celery task events (what Flower shows);
                               default on. The embedded private cluster, which no Flower
                               can reach, runs without them.
=============================  ==========================================================
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from curator_worker.errors import ConfigurationError

DEFAULT_QUEUE = "curator"
DEFAULT_VISIBILITY_TIMEOUT = 3600
DEFAULT_JOB_TTL = 7 * 24 * 3600


def redact_url(url: str | None) -> str:
    """``url`` with any password replaced by ``***`` (safe to print or log).

    Examples
    --------
    >>> redact_url("redis://:s3cret@host:6379/0")
    'redis://:***@host:6379/0'
    """
    if not url:
        return "<none>"
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    netloc = f"{user}:***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _int_env(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r} is not an integer number of seconds.") from None
    if value <= 0:
        raise ConfigurationError(f"{name} must be positive, got {value}.")
    return value


def _bool_env(environ: Mapping[str, str], name: str, default: bool) -> bool:
    raw = environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"{name}={raw!r}: use 1 or 0.")


def is_redis_url(url: str | None) -> bool:
    """True for ``redis://``, ``rediss://``, ``redis+socket://`` and ``unix://`` URLs."""
    return bool(url) and url.split("://", 1)[0] in {"redis", "rediss", "redis+socket", "unix"}


@dataclass(frozen=True)
class Settings:
    """Where the cluster is and how it behaves.

    Parameters
    ----------
    broker_url : str | None
        Celery broker; ``None`` means no cluster is configured.
    result_backend : str | None
        Celery result backend; defaults to the broker when that is Redis.
    job_store_url : str | None
        Redis of the job store; defaults to the result backend.
    queue : str
        Default queue of batch tasks.
    visibility_timeout : int
        Seconds before an unacknowledged message is redelivered.
    job_ttl : int
        Seconds job records live after the job ends.
    task_events : bool
        Workers send task events and producers ``task-sent`` events (for Flower).
    """

    broker_url: str | None = None
    result_backend: str | None = None
    job_store_url: str | None = None
    queue: str = DEFAULT_QUEUE
    visibility_timeout: int = DEFAULT_VISIBILITY_TIMEOUT
    job_ttl: int = DEFAULT_JOB_TTL
    task_events: bool = True

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``CURATOR_*`` variables; non-``None`` ``overrides`` win."""
        env = os.environ if environ is None else environ
        settings = cls(
            broker_url=env.get("CURATOR_BROKER_URL") or None,
            result_backend=env.get("CURATOR_RESULT_BACKEND") or None,
            job_store_url=env.get("CURATOR_JOB_STORE_URL") or None,
            queue=env.get("CURATOR_QUEUE") or DEFAULT_QUEUE,
            visibility_timeout=_int_env(
                env, "CURATOR_VISIBILITY_TIMEOUT", DEFAULT_VISIBILITY_TIMEOUT
            ),
            job_ttl=_int_env(env, "CURATOR_JOB_TTL", DEFAULT_JOB_TTL),
            task_events=_bool_env(env, "CURATOR_TASK_EVENTS", True),
        )
        given = {k: v for k, v in overrides.items() if v is not None}
        return replace(settings, **given) if given else settings

    @property
    def configured(self) -> bool:
        """True when a broker is configured (otherwise the embedded cluster is used)."""
        return self.broker_url is not None

    @property
    def effective_result_backend(self) -> str | None:
        """The result backend: explicit, else the broker when it is Redis."""
        if self.result_backend:
            return self.result_backend
        return self.broker_url if is_redis_url(self.broker_url) else None

    @property
    def effective_job_store_url(self) -> str | None:
        """The job store's Redis: explicit, else the result backend."""
        return self.job_store_url or self.effective_result_backend

    def require_cluster(self) -> None:
        """Raise :class:`ConfigurationError` unless a broker and a Redis job store are set."""
        if not self.configured:
            raise ConfigurationError(
                "No broker configured. Set CURATOR_BROKER_URL=redis://host:6379/0 "
                "(or pass --broker)."
            )
        store = self.effective_job_store_url
        if not is_redis_url(store):
            raise ConfigurationError(
                f"The job store must be Redis, got {redact_url(store)}. Set "
                "CURATOR_RESULT_BACKEND or CURATOR_JOB_STORE_URL to a redis:// URL."
            )

    def environ(self) -> dict[str, str]:
        """These settings as ``CURATOR_*`` variables, for child processes."""
        env = {
            "CURATOR_QUEUE": self.queue,
            "CURATOR_VISIBILITY_TIMEOUT": str(self.visibility_timeout),
            "CURATOR_JOB_TTL": str(self.job_ttl),
        }
        if not self.task_events:
            env["CURATOR_TASK_EVENTS"] = "0"
        for name, value in (
            ("CURATOR_BROKER_URL", self.broker_url),
            ("CURATOR_RESULT_BACKEND", self.result_backend),
            ("CURATOR_JOB_STORE_URL", self.job_store_url),
        ):
            if value:
                env[name] = value
        return env


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings (Celery's own names) for ``settings``.

    Safe defaults for long data work: JSON only, late acknowledgement, requeue when a
    child dies, one task per process at a time, task events on for Flower.
    """
    transport = {
        "visibility_timeout": settings.visibility_timeout,
        # kombu's sweep that restores unacknowledged messages: every few seconds instead of
        # ~100 s, so a batch whose worker died returns soon after the visibility timeout.
        "unacked_restore_interval": max(1, min(10, settings.visibility_timeout // 4)),
        "unacked_restore_throttle": 1,
        # the sweep's lock must not outlive a host that died holding it by minutes
        "unacked_mutex_expire": max(5, min(60, settings.visibility_timeout // 2)),
    }
    return {
        "broker_url": settings.broker_url,
        "result_backend": settings.effective_result_backend,
        "broker_transport_options": dict(transport),
        "result_backend_transport_options": dict(transport),
        "broker_connection_retry_on_startup": True,
        # A node rides out a broker outage of any length and resumes on its own: retry the
        # connection forever (Celery's default gives up after 100 tries, ~47 minutes).
        "broker_connection_retry": True,
        "broker_connection_max_retries": None,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": settings.queue,
        "task_send_sent_event": settings.task_events,
        "worker_send_task_events": settings.task_events,
        "result_expires": settings.job_ttl,
        "task_track_started": True,
        "task_allow_error_cb_on_chord_header": False,
    }
