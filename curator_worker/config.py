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

Every value is checked when read (:func:`check_environment`): seconds are whole numbers
in range, booleans ``1``/``0``, URLs parse and name a host or socket file. A bad value is a
one-line :class:`ConfigurationError`, never a fall-back to a default.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import unquote, urlsplit

from curator_worker import message_size
from curator_worker.errors import ConfigurationError

DEFAULT_QUEUE = "curator"
DEFAULT_VISIBILITY_TIMEOUT = 3600
DEFAULT_JOB_TTL = 7 * 24 * 3600


#: Bounds of the numeric settings (seconds): CURATOR_VISIBILITY_TIMEOUT up to 30 days,
#: CURATOR_JOB_TTL up to 10 years. Beyond them Redis expiries and kombu's arithmetic overflow.
MAX_VISIBILITY_TIMEOUT = 30 * 24 * 3600
MAX_JOB_TTL = 10 * 365 * 24 * 3600
#: URL schemes that name a socket file rather than a host.
_SOCKET_SCHEMES = frozenset({"redis+socket", "unix", "socket"})
#: URL schemes that must name a host (others, such as Celery's ``rpc://`` result backend,
#: are only checked to parse).
_HOST_SCHEMES = frozenset({"redis", "rediss", "amqp", "amqps", "pyamqp", "librabbitmq"})
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
_SECRET_QUERY = re.compile(r"((?:^|[?&;])[^=&;#]*(?:pass|secret|token|key)[^=&;#]*=)[^&;#]*",
                           re.IGNORECASE)
_MODULE_PREFIX = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*\.?")
#: Passwords of the URLs this process was configured with, scrubbed from any text shown.
_known_secrets: set[str] = set()
#: Shorter passwords are not scrubbed by value (it would garble text); structure still is.
_MIN_SCRUBBED = 4


def _split_userinfo(body: str) -> tuple[str | None, str]:
    """``(userinfo, rest)`` of what follows ``scheme://``; userinfo ends at the last ``@``.

    The last ``@`` (not urllib's rules) so that a password holding ``#``, ``/``, ``?`` or
    ``@`` unencoded is still all inside the userinfo.
    """
    at = body.rfind("@")
    if at < 0:
        return None, body
    return body[:at], body[at + 1:]


def _redact_body(body: str) -> str:
    userinfo, rest = _split_userinfo(body)
    rest = _SECRET_QUERY.sub(r"\1***", rest)
    if userinfo is None:
        return rest
    user = userinfo.split(":", 1)[0] if ":" in userinfo else ""
    if any(c in user for c in "/?#[] "):  # no real user name: all of it may be secret
        user = ""
    return f"{user}:***@{rest}" if user or ":" in userinfo else f"***@{rest}"


def _printable(text: str, keep: str = "") -> str:
    """``text`` with control characters (but those in ``keep``) shown as escapes."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c in keep else repr(c)[1:-1] for c in text)


def remember_secrets(url: str | None) -> None:
    """Note the password of ``url`` so that :func:`redact_text` scrubs it from any text."""
    if not url or "@" not in url:
        return
    body = url.split("://", 1)[1] if "://" in url else url
    userinfo, _ = _split_userinfo(body)
    if not userinfo:
        return
    secret = userinfo.split(":", 1)[1] if ":" in userinfo else userinfo
    for form in (secret, unquote(secret)):
        if len(form) >= _MIN_SCRUBBED:
            _known_secrets.add(form)


def _scrub(text: str) -> str:
    for secret in sorted(_known_secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def redact_url(url: str | None) -> str:
    """``url`` with any password replaced by ``***`` (safe to print or log).

    Works on any string, however malformed: everything between ``://`` and the last ``@``
    is treated as credentials (the user name is kept), ``password=``-like query values are
    hidden, and passwords of the configured URLs are scrubbed wherever they appear. A
    string that is not one URL (an error message) goes through :func:`redact_text`.

    Examples
    --------
    >>> redact_url("redis://:s3cret@host:6379/0")
    'redis://:***@host:6379/0'
    >>> redact_url("redis://alice:pa#ss/w@host:6379/0")
    'redis://alice:***@host:6379/0'
    """
    if not url:
        return "<none>"
    text = str(url)
    found = _SCHEME.match(text)
    if found is None:
        return redact_text(text)
    remember_secrets(text)
    return _printable(_scrub(found.group(0) + _redact_body(text[found.end():])))


def redact_text(text: str) -> str:
    """``text`` (an error message, a log line) with every URL's credentials hidden.

    A URL inside text ends at white space; passwords of configured URLs (see
    :func:`remember_secrets`) are scrubbed by value, spaces and all.
    """
    text = _scrub(str(text))
    pieces: list[str] = []
    pos = 0
    for found in _SCHEME.finditer(text):
        if found.start() < pos:
            continue
        end = found.end()
        while end < len(text) and not text[end].isspace():
            end += 1
        body = text[found.end():end]
        # a sentence may follow the URL directly ("...@host:6379/0: refused")
        pieces.append(text[pos:found.end()] + _redact_body(body))
        pos = end
    pieces.append(text[pos:])
    return _printable("".join(pieces), keep="\n\t")


def check_url(name: str, url: str | None) -> None:
    """Raise :class:`ConfigurationError` unless ``url`` names a server it can reach.

    A URL must have a scheme, parse, and (unless it names a socket file) a host: a bare
    ``redis://`` would otherwise fall back to localhost, a server the URL never named.
    """
    if url is None:
        return
    shown = redact_url(url)
    encode = ("Characters such as # / ? @ % or spaces in a password must be percent-encoded "
              "(%23 %2F %3F %40 %25 %20).")
    found = _SCHEME.match(url)
    if found is None:  # not shown: it may be a password set in the wrong variable
        raise ConfigurationError(
            f"{name} is not a URL (no scheme://). Use the form redis://host:6379/0."
        )
    scheme = found.group(0)[:-3].lower()
    userinfo, _ = _split_userinfo(url[found.end():])
    if userinfo is not None and any(c in userinfo for c in "/?#[]"):
        # urllib would end the host at that character and read part of the password as
        # the host or the path (and a connection error would then print it)
        raise ConfigurationError(f"{name} {shown} has an unencoded character in its "
                                 f"password. {encode}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigurationError(
            f"{name} {shown} cannot be parsed ({redact_text(str(exc))}). {encode}"
        ) from None
    if scheme in _SOCKET_SCHEMES:
        if not (parts.path or parts.netloc):
            raise ConfigurationError(
                f"{name} {shown} names no socket file. Use {scheme}:///path/to/redis.sock."
            )
        return
    if scheme not in _HOST_SCHEMES:
        return
    if not parts.hostname or not parts.hostname.isprintable() or " " in parts.hostname:
        raise ConfigurationError(
            f"{name} {shown} names no host. Give one, e.g. {scheme}://host:6379/0. {encode}"
        )
    if port == 0:
        raise ConfigurationError(f"{name} {shown}: port 0 is not a port. Use e.g. 6379.")


def _int_env(environ: Mapping[str, str], name: str, default: int, maximum: int) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    fix = f"Set a whole number of seconds from 1 to {maximum} (default {default}), or unset it."
    if not raw.isascii() or not raw.isdigit():
        raise ConfigurationError(f"{name}={_printable(raw)!r} is not a whole number. {fix}")
    if len(raw) > 20 or not 1 <= int(raw) <= maximum:
        raise ConfigurationError(f"{name}={_printable(raw)!r} is out of range. {fix}")
    return int(raw)


def _bool_env(environ: Mapping[str, str], name: str, default: bool) -> bool:
    raw = environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(
        f"{name}={_printable(raw)!r}: use 1 or 0 (it is a boolean; default "
        f"{int(default)}), or unset it."
    )


def _queue_env(environ: Mapping[str, str]) -> str:
    raw = environ.get("CURATOR_QUEUE", "")
    if not raw:
        return DEFAULT_QUEUE
    check_queue_name(raw, "CURATOR_QUEUE")
    return raw


def check_queue_name(queue: str, name: str = "--queue") -> None:
    """Raise :class:`ConfigurationError` for a blank, too long or unprintable queue name."""
    if not queue.strip() or queue != queue.strip() or not queue.isprintable() or len(queue) > 200:
        raise ConfigurationError(
            f"{name}={_printable(queue)!r} is not a usable queue name: use 1 to 200 printable "
            "characters without leading or trailing spaces (default 'curator')."
        )


def allowed_module_prefixes(environ: Mapping[str, str] | None = None) -> tuple[str, ...] | None:
    """Prefixes from ``CURATOR_ALLOWED_MODULES`` (comma-separated), or ``None`` (any module).

    A prefix is a dotted module name, optionally ending in ``.`` (``mypipe.`` and ``mypipe``
    both allow ``mypipe`` and ``mypipe.anything``).

    Raises
    ------
    ConfigurationError
        If an entry is not a dotted module name.
    """
    env = os.environ if environ is None else environ
    raw = env.get("CURATOR_ALLOWED_MODULES", "").strip()
    if not raw:
        return None
    prefixes = tuple(p.strip() for p in raw.split(",") if p.strip())
    for prefix in prefixes:
        if not _MODULE_PREFIX.fullmatch(prefix):
            raise ConfigurationError(
                f"CURATOR_ALLOWED_MODULES: {_printable(prefix)!r} is not a module name. Give "
                "comma-separated dotted module prefixes, e.g. mypipe,acme.curation."
            )
    if not prefixes:
        raise ConfigurationError(
            f"CURATOR_ALLOWED_MODULES={_printable(raw)!r} names no module. Give "
            "comma-separated module prefixes, e.g. mypipe,acme.curation, or unset it."
        )
    return prefixes


def check_environment(environ: Mapping[str, str] | None = None) -> Settings:
    """Validate every ``CURATOR_*`` variable this package reads; return the settings.

    Commands call it first, so that a bad value is one line (exit 2), not a traceback
    from whichever module reads it first.
    """
    env = os.environ if environ is None else environ
    allowed_module_prefixes(env)
    size = message_size
    raw = env.get(size.MAX_MESSAGE_BYTES_VARIABLE, "")
    if size.message_bytes_cap(raw) is None:
        raise ConfigurationError(
            f"{size.MAX_MESSAGE_BYTES_VARIABLE}={ascii(raw)[:80]} is not a whole number of "
            f"bytes from 1 to {size.MAX_MESSAGE_BYTES_LIMIT}. Set e.g. "
            f"{size.DEFAULT_MAX_MESSAGE_BYTES} (the default), or unset it."
        )
    return Settings.from_env(env)


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

    def __post_init__(self) -> None:
        for name, url in (("The broker URL (CURATOR_BROKER_URL or --broker)", self.broker_url),
                          ("CURATOR_RESULT_BACKEND", self.result_backend),
                          ("CURATOR_JOB_STORE_URL", self.job_store_url)):
            remember_secrets(url)
            check_url(name, url)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``CURATOR_*`` variables; non-``None`` ``overrides`` win."""
        env = os.environ if environ is None else environ
        settings = cls(
            broker_url=env.get("CURATOR_BROKER_URL") or None,
            result_backend=env.get("CURATOR_RESULT_BACKEND") or None,
            job_store_url=env.get("CURATOR_JOB_STORE_URL") or None,
            queue=_queue_env(env),
            visibility_timeout=_int_env(
                env, "CURATOR_VISIBILITY_TIMEOUT", DEFAULT_VISIBILITY_TIMEOUT,
                MAX_VISIBILITY_TIMEOUT,
            ),
            job_ttl=_int_env(env, "CURATOR_JOB_TTL", DEFAULT_JOB_TTL, MAX_JOB_TTL),
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
