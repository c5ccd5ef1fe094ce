"""The dashboard's web server (Tornado): the page, its JSON API and ``/metrics``.

Routes (all ``GET``; any other method is refused with 405, so no cross-site form can
change anything):

``/``                  the page (``static/index.html``), which polls the API every second
``/static/...``        its script and style sheet
``/api/jobs``          recent jobs, newest first (``?limit=N``)
``/api/jobs/<job>``    one job: progress, throughput, lanes, stages, failures, pipeline
``/metrics``           job-level Prometheus metrics (:mod:`curator_worker.dashboard.metrics`)
``/healthz``           ``ok``

Access follows the rules of ``curator-worker flower``: the server binds 127.0.0.1 unless
told otherwise; basic auth (:func:`parse_credentials`) is required on any other address,
and when it is set every route is behind it. Without auth, requests whose ``Host`` is not a
loopback name are refused, so a web page cannot reach the dashboard by rebinding its own
DNS name to 127.0.0.1. Requests a browser marks cross-site (``Sec-Fetch-Site``) are refused
except top-level navigation.

Job store reads run on one thread beside the event loop, so a slow read never stalls the
server, and reads are serialized (:class:`~curator_worker.dashboard.views.JobViews`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import ipaddress
import json
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, TypeVar

import redis
import tornado.ioloop
import tornado.web
from prometheus_client.exposition import choose_encoder

from curator_worker.dashboard.metrics import job_registry
from curator_worker.dashboard.views import JobViews
from curator_worker.errors import ConfigurationError, CuratorError, JobNotFoundError
from curator_worker.store import JobStore

log = logging.getLogger(__name__)

#: The environment variable holding the dashboard's basic-auth credentials.
AUTH_ENV = "CURATOR_DASHBOARD_BASIC_AUTH"
DEFAULT_ADDRESS = "127.0.0.1"
DEFAULT_PORT = 5580
STATIC_DIR = str(resources.files("curator_worker.dashboard").joinpath("static"))
T = TypeVar("T")


def parse_credentials(text: str) -> dict[str, str]:
    """``user:password[,user2:password2...]`` as a user -> password mapping.

    Parameters
    ----------
    text : str
        The value of :data:`AUTH_ENV`. A password may contain ``:`` (the user name ends at
        the first one), not ``,``.

    Returns
    -------
    dict[str, str]
        Empty when ``text`` is blank.

    Raises
    ------
    ConfigurationError
        If an entry lacks a user name or a password (the message never shows them).

    Examples
    --------
    >>> parse_credentials("admin:s3cret, ops:a:b")
    {'admin': 's3cret', 'ops': 'a:b'}
    """
    out: dict[str, str] = {}
    for entry in (e.strip() for e in text.split(",")):
        if not entry and not text.strip():
            continue
        user, sep, password = entry.partition(":")
        if not sep or not user or not password:
            raise ConfigurationError(
                f"{AUTH_ENV} must be user:password (several separated by commas), both "
                "non-empty.")
        out[user] = password
    return out


def is_loopback(address: str) -> bool:
    """Whether ``address`` (an IP address or host name) is this machine only.

    Examples
    --------
    >>> is_loopback("127.0.0.1"), is_loopback("::1"), is_loopback("localhost")
    (True, True, True)
    >>> is_loopback("0.0.0.0"), is_loopback("")
    (False, False)
    """
    name = address.strip().strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class DashboardConfig:
    """How the dashboard serves.

    Attributes
    ----------
    address, port
        Where to listen.
    credentials : Mapping[str, str]
        User -> password for basic auth; empty: no auth (loopback addresses only).
    jobs : int
        Jobs the page lists.
    metrics_jobs : int
        Jobs ``/metrics`` exports.
    """

    address: str = DEFAULT_ADDRESS
    port: int = DEFAULT_PORT
    credentials: Mapping[str, str] = field(default_factory=dict)
    jobs: int = 20
    metrics_jobs: int = 50

    def check(self) -> None:
        """Refuse to serve a non-loopback address without credentials.

        Raises
        ------
        ConfigurationError
            Naming the address, the variable to set and the alternative.
        """
        if not self.credentials and not is_loopback(self.address):
            raise ConfigurationError(
                f"Refusing to serve the dashboard on {self.address or 'all addresses'} "
                f"without authentication. Set {AUTH_ENV}=user:password, or bind 127.0.0.1.")


def _host_of(header: str) -> str:
    """The host name of a ``Host`` header (port and IPv6 brackets removed)."""
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class _Guarded(tornado.web.RequestHandler):
    """GET and HEAD only; basic auth, Host and cross-site checks before any handler runs."""

    SUPPORTED_METHODS = ("GET", "HEAD")  # type: ignore[assignment]

    def set_default_headers(self) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("Content-Security-Policy",
                        "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'")
        self.set_header("Cache-Control", "no-store")

    def prepare(self) -> None:
        config: DashboardConfig = self.settings["dashboard"]
        headers = self.request.headers
        if (headers.get("Sec-Fetch-Site") == "cross-site"
                and headers.get("Sec-Fetch-Mode") != "navigate"):
            raise tornado.web.HTTPError(403, reason="Cross-site request refused")
        if not config.credentials:
            if not is_loopback(_host_of(self.request.host or "")):
                raise tornado.web.HTTPError(403, reason="Host not allowed")
            return
        if not self._authorized(config.credentials, headers.get("Authorization", "")):
            raise tornado.web.HTTPError(401)

    @staticmethod
    def _authorized(credentials: Mapping[str, str], header: str) -> bool:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "basic" or not token:
            return False
        try:
            user, sep, password = base64.b64decode(token.strip(), validate=True).decode(
                "utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        ok = False
        for known_user, known_password in credentials.items():
            # compare every entry, in constant time, so timing tells nothing
            ok |= (hmac.compare_digest(user.encode(), known_user.encode())
                   & hmac.compare_digest(password.encode(), known_password.encode()))
        return bool(sep) and ok

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run job store read ``fn(*args)`` on the reader thread."""
        loop = tornado.ioloop.IOLoop.current()
        try:
            return await loop.run_in_executor(self.settings["reader"], fn, *args)
        except redis.RedisError as exc:
            log.warning("job store read failed: %s", exc)
            raise tornado.web.HTTPError(
                503, reason=f"Job store unreachable: {type(exc).__name__}") from None

    def write_json(self, data: Any) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps(data, separators=(",", ":")))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if status_code == 401:  # send_error cleared the headers: set it here
            self.set_header("WWW-Authenticate", 'Basic realm="curator dashboard"')
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps({"error": self._reason, "status": status_code}))


class _Static(_Guarded, tornado.web.StaticFileHandler):
    """The page and its files, behind the same checks."""


class _JobsHandler(_Guarded):
    async def get(self) -> None:
        config: DashboardConfig = self.settings["dashboard"]
        try:
            limit = min(max(int(self.get_query_argument("limit", str(config.jobs))), 1), 1000)
        except ValueError:
            raise tornado.web.HTTPError(400, reason="limit must be an integer") from None
        views: JobViews = self.settings["views"]
        self.write_json(await self.read(views.jobs, limit))


class _JobHandler(_Guarded):
    async def get(self, job_id: str) -> None:
        views: JobViews = self.settings["views"]
        try:
            data = await self.read(views.job, job_id)
        except JobNotFoundError as exc:
            raise tornado.web.HTTPError(404, reason=str(exc)) from None
        self.write_json(data)


class _MetricsHandler(_Guarded):
    async def get(self) -> None:
        encoder, content_type = choose_encoder(self.request.headers.get("Accept", ""))
        body = await self.read(encoder, self.settings["registry"])
        self.set_header("Content-Type", content_type)
        self.finish(body)


class _HealthHandler(_Guarded):
    def get(self) -> None:
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish("ok\n")


def make_app(store: JobStore, config: DashboardConfig) -> tornado.web.Application:
    """The dashboard's Tornado application on ``store`` (not listening yet).

    Parameters
    ----------
    store : JobStore
        Where jobs are read from.
    config : DashboardConfig
        Credentials and list sizes (the address is checked by :meth:`DashboardConfig.check`).

    Returns
    -------
    tornado.web.Application
    """
    views = JobViews(store)
    static = {"path": STATIC_DIR}
    return tornado.web.Application(
        [
            (r"/()", _Static, {**static, "default_filename": "index.html"}),
            (r"/static/(.*)", _Static, static),
            (r"/api/jobs", _JobsHandler),
            (r"/api/jobs/([A-Za-z0-9._:-]{1,200})", _JobHandler),
            (r"/metrics", _MetricsHandler),
            (r"/healthz", _HealthHandler),
        ],
        dashboard=config,
        views=views,
        registry=job_registry(views, config.metrics_jobs),
        reader=ThreadPoolExecutor(max_workers=1, thread_name_prefix="dashboard-reader"),
        default_handler_class=_NotFound,
        compress_response=True,
    )


class _NotFound(_Guarded):
    def get(self, *args: Any) -> None:
        raise tornado.web.HTTPError(404, reason="No such page")


def serve(store: JobStore, config: DashboardConfig,
          on_ready: Callable[[str], None] | None = None) -> None:
    """Serve the dashboard until interrupted (Ctrl-C raises ``KeyboardInterrupt``).

    Parameters
    ----------
    store : JobStore
        Where jobs are read from.
    config : DashboardConfig
        Address, port and credentials; checked first.
    on_ready : callable, optional
        Called with the dashboard's URL once it listens.

    Raises
    ------
    ConfigurationError
        A non-loopback address without credentials.
    CuratorError
        If the address cannot be listened on (port in use, unknown address).
    """
    config.check()
    asyncio.run(_serve(store, config, on_ready))


async def _serve(store: JobStore, config: DashboardConfig,
                 on_ready: Callable[[str], None] | None) -> None:
    app = make_app(store, config)
    try:
        server = app.listen(config.port, config.address)
    except OSError as exc:
        raise CuratorError(
            f"Cannot listen on {config.address}:{config.port}: {exc.strerror or exc}. "
            "Choose another --port or --address.") from None
    host = f"[{config.address}]" if ":" in config.address else config.address
    if on_ready is not None:
        on_ready(f"http://{host}:{config.port}/")
    try:
        await asyncio.Event().wait()
    finally:
        server.stop()
        app.settings["reader"].shutdown(wait=False, cancel_futures=True)
