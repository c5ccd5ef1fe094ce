"""Flower behind our rules: the one module that touches Flower's internals.

``curator-worker flower`` runs this module as ``python -P -m curator_worker.flower_guard``
(``-P``: the working directory is not on the import path, so a ``kombu.py`` there is never
imported). It resolves Flower's options the way Flower does (``FLOWER_*`` variables, an
explicit ``--conf`` file, command-line options), then enforces, whatever route an option came
by:

- **Credentials** come from ``CURATOR_FLOWER_BASIC_AUTH`` (or ``FLOWER_BASIC_AUTH`` / a
  config file), never from the command line; each one is ``user:password`` with both parts
  non-empty.
- **Every path** (``/metrics``, ``/healthcheck``, static files, unknown paths) needs the
  credentials when they are set.
- **Addresses**: without credentials, every socket Flower actually bound must be a loopback
  address, and each request must name a loopback host (``Host`` header: no DNS rebinding).
- **Task API** (apply, async-apply, send-task, revoke, abort, rate limits, timeouts, worker
  shutdown, pool and consumer control: every request that is not ``GET``/``HEAD``/
  ``OPTIONS``) answers 403 unless ``--enable-task-api`` or ``CURATOR_FLOWER_TASK_API=1``; it
  also sets Flower's own ``read_only`` option.
- **Cross-site requests**: a state-changing request whose ``Origin``, ``Referer`` or
  ``Sec-Fetch-Site`` shows another site answers 403, and no response carries CORS headers.
- ``flowerconfig.py`` in the working directory is not executed; ``--conf FILE`` is.

This module is the wall around Flower's internals (``flower.command``, ``flower.options``,
``flower.urls.settings``, the ``Flower`` app), as :mod:`curator_worker.compat` is for
Celery's and kombu's: it is kept apart because it runs in Flower's own process and needs
nothing from there. Checked with Flower 2.2.0 (``flower<2.3`` in
``pyproject.toml``); tests/unit/test_flower_guard.py and tests/integration/test_flower*.py
fail on a Flower that changes what it relies on.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import os
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from curator_worker.errors import ConfigurationError, CuratorError

if TYPE_CHECKING:
    import socket

#: Credentials: ``user:password[,user2:password2]``.
AUTH_ENV = "CURATOR_FLOWER_BASIC_AUTH"
#: ``1`` turns on Flower's task-running API (same as ``--enable-task-api``).
TASK_API_ENV = "CURATOR_FLOWER_TASK_API"
#: Flower options that carry credentials or another authentication scheme.
_REFUSED_OPTIONS = {"basic_auth", "auth", "auth_provider", "oauth2_key", "oauth2_secret",
                    "oauth2_redirect_uri"}
_SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}
_CORS_HEADERS = ("Access-Control-Allow-Origin", "Access-Control-Allow-Headers",
                 "Access-Control-Allow-Methods", "Access-Control-Allow-Credentials")


def parse_credentials(text: str, source: str = AUTH_ENV) -> list[str]:
    """``user:password[,user2:password2]`` as a list of ``user:password`` strings.

    Parameters
    ----------
    text
        The value to parse (surrounding whitespace is ignored).
    source
        Where the value came from, named in the error.

    Returns
    -------
    list of str
        One ``user:password`` per credential; empty when ``text`` is blank.

    Raises
    ------
    ConfigurationError
        A credential is not ``user:password`` with a non-empty user and password, or holds a
        control character. The message never shows the credential.

    Examples
    --------
    >>> parse_credentials("admin:s3cret,ann:pw:with:colons")
    ['admin:s3cret', 'ann:pw:with:colons']
    """
    text = text.strip()
    if not text:
        return []
    items = text.split(",")
    for number, item in enumerate(items, 1):
        user, colon, password = item.partition(":")
        if not (colon and user and password) or any(
                ord(c) < 32 or ord(c) == 127 for c in item):
            raise ConfigurationError(
                f"{source}: credential {number} of {len(items)} is not user:password with a "
                "non-empty user and password; use user:password[,user2:password2].")
    return items


def task_api_enabled(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether ``CURATOR_FLOWER_TASK_API`` turns Flower's task-running API on.

    Raises
    ------
    ConfigurationError
        The value is not one of 1/0, true/false, yes/no, on/off.
    """
    value = environ.get(TASK_API_ENV, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigurationError(f"{TASK_API_ENV}={environ[TASK_API_ENV]!r} is not a boolean: "
                             "use 1 to turn Flower's task API on, 0 to keep it off.")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an IP literal, ``[v6]`` or ``localhost``) names this machine only.

    Examples
    --------
    >>> [is_loopback(h) for h in ("127.0.0.2", "[::1]", "localhost", "::", "0.0.0.0")]
    [True, True, True, False, False]
    """
    host = host.strip().lower().removeprefix("[").removesuffix("]").split("%")[0]
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def check_request(method: str, host: str, headers: Mapping[str, str], credentials: list[str],
                  task_api: bool) -> tuple[int, str] | None:
    """Why a request must be refused, as ``(status, reason)``, or None to let it through.

    Parameters
    ----------
    method, host
        The request's method and ``Host`` (with port).
    headers
        The request's headers (case-insensitive mapping).
    credentials
        Accepted ``user:password`` strings; empty: no authentication (loopback only).
    task_api
        Whether state-changing requests (Flower's task and control API) are allowed.
    """
    if credentials:
        if not _authorized(headers.get("Authorization", ""), credentials):
            return 401, "Authentication required."
    elif not is_loopback(_host_name(host)):
        return 403, "Without credentials Flower answers only requests to a loopback host."
    if method.upper() in _SAFE_METHODS:
        return None
    if not task_api:
        return 403, ("Flower's task API is off: start `curator-worker flower` with "
                     "--enable-task-api (or CURATOR_FLOWER_TASK_API=1) to turn it on.")
    site = headers.get("Sec-Fetch-Site", "").strip().lower()
    if site and site not in ("same-origin", "none"):
        return 403, "Cross-site request refused."
    for name in ("Origin", "Referer"):
        value = headers.get(name)
        if value is not None:
            if urlsplit(value.strip()).netloc.lower() != host.lower():
                return 403, f"Cross-site request refused ({name} does not match Host)."
            break
    return None


def _host_name(host: str) -> str:
    from tornado.httputil import split_host_and_port

    return split_host_and_port(host.lower())[0] if host else ""


def _authorized(header: str, credentials: list[str]) -> bool:
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        given = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    found = False
    for credential in credentials:  # compare against all: no early exit to time
        found |= hmac.compare_digest(credential.encode(), given)
    return found


def _flower_option_name(arg: str) -> str:
    return arg.lstrip("-").partition("=")[0].replace("-", "_")


def _resolve_options(argv: list[str]) -> Any:
    """Flower's options from ``FLOWER_*``, an explicit ``--conf`` and ``argv``, as Flower does,
    except that ``flowerconfig.py`` in the working directory is not executed."""
    from flower.command import apply_env_options
    from flower.options import options
    from tornado.options import Error, parse_command_line, parse_config_file

    for arg in argv:
        if not arg.startswith("-"):
            raise ConfigurationError(f"Unexpected argument {arg!r} for Flower: options are "
                                     "--name=value (see `celery flower --help`).")
        name = _flower_option_name(arg)
        if name in _REFUSED_OPTIONS:
            raise ConfigurationError(
                f"--{name.replace('_', '-')} is not accepted on the command line (any local "
                f"user can read it there): set {AUTH_ENV}=user:password instead.")
        if name != "help" and not hasattr(options, name):
            raise ConfigurationError(f"Unknown Flower option {arg.partition('=')[0]!r} "
                                     "(see `celery flower --help`).")
    prog = "curator-worker flower"
    explicit_conf = bool(os.environ.get("FLOWER_CONF")) or any(
        _flower_option_name(a) == "conf" for a in argv)
    try:
        apply_env_options()
        parse_command_line([prog, *argv])
    except (Error, ValueError, TypeError) as exc:
        raise ConfigurationError(f"Bad Flower option: {exc}") from None
    if explicit_conf:
        conf = os.path.abspath(options.conf)
        try:
            parse_config_file(conf, final=False)
            parse_command_line([prog, *argv])
        except OSError as exc:
            raise ConfigurationError(f"Cannot read Flower config file {conf}: "
                                     f"{exc.strerror or exc}") from None
        except Exception as exc:  # noqa: BLE001 - the file is Python: any error, one line
            raise ConfigurationError(f"Flower config file {conf}: {type(exc).__name__}: "
                                     f"{exc}") from None
    return options


def _build_app(argv: list[str]) -> tuple[Any, list[str]]:
    """Flower's app with our rules, and the credentials it enforces."""
    import tornado.web
    from flower.app import Flower
    from flower.command import extract_settings, setup_logging
    from flower.urls import settings
    from tornado.httpserver import HTTPServer
    from tornado.netutil import bind_sockets, bind_unix_socket

    options = _resolve_options(argv)
    credentials = parse_credentials(os.environ.get(AUTH_ENV, ""))
    for credential in options.basic_auth or []:  # FLOWER_BASIC_AUTH or a config file
        credentials += parse_credentials(credential, "Flower's basic_auth option")
    for name in _REFUSED_OPTIONS - {"basic_auth"}:
        if getattr(options, name):
            raise ConfigurationError(
                f"Flower's {name} option is not supported by curator-worker flower: use "
                f"basic auth through {AUTH_ENV}=user:password.")
    task_api = task_api_enabled()
    options.basic_auth = credentials
    options.read_only = not task_api
    if not credentials:
        os.environ["FLOWER_UNAUTHENTICATED_API"] = "true"  # our checks keep it to loopback
    extract_settings()
    settings["autoreload"] = False  # --debug: no re-exec (it would drop -P), no tracebacks
    settings["serve_traceback"] = False
    setup_logging()

    class Refused(tornado.web.RequestHandler):
        def initialize(self, status: int, reason: str) -> None:
            self.status, self.reason = status, reason

        def check_xsrf_cookie(self) -> None:  # refused anyway
            return None

        def prepare(self) -> None:
            self.set_status(self.status)
            if self.status == 401:
                self.set_header("WWW-Authenticate", 'Basic realm="curator-worker flower"')
            self.set_header("Content-Type", "text/plain; charset=UTF-8")
            self.finish(self.reason + "\n")

    class SafeHeaders(tornado.web.OutputTransform):
        def transform_first_chunk(self, status_code: int, headers: Any, chunk: bytes,
                                  finishing: bool) -> tuple[int, Any, bytes]:
            for name in _CORS_HEADERS:
                if name in headers:
                    del headers[name]
            headers["X-Frame-Options"] = "DENY"
            headers["Content-Security-Policy"] = "frame-ancestors 'none'"
            return status_code, headers, chunk

    class GuardedFlower(Flower):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.transforms.append(SafeHeaders)
            self.bound: list[str] = []

        def find_handler(self, request: Any, **kwargs: Any) -> Any:
            refusal = check_request(request.method or "", request.host or "",
                                    request.headers, credentials, task_api)
            if refusal is None:
                return super().find_handler(request, **kwargs)
            status, reason = refusal
            return self.get_handler_delegate(request, Refused,
                                             {"status": status, "reason": reason})

        def start_http_server(self) -> int | None:
            server = HTTPServer(self, ssl_options=self.ssl_options,
                                xheaders=self.options.xheaders)
            if self.options.unix_socket:  # only this user may connect
                server.add_socket(bind_unix_socket(self.options.unix_socket, mode=0o600))
                self.bound = [f"unix:{self.options.unix_socket}"]
                return None
            try:
                sockets = bind_sockets(self.options.port, address=self.options.address or None)
            except OSError as exc:
                raise ConfigurationError(
                    f"Cannot listen on {self.options.address or '*'}:{self.options.port}: "
                    f"{exc.strerror or exc}") from None
            public = [_sockname(s) for s in sockets if not is_loopback(_sockname(s))]
            if public and not credentials:
                for sock in sockets:
                    sock.close()
                raise ConfigurationError(
                    f"Refusing to serve Flower on {', '.join(public)} without authentication."
                    f" Set {AUTH_ENV}=user:password, or bind 127.0.0.1.")
            server.add_sockets(sockets)
            self.bound = [_sockname(s) for s in sockets]
            return sockets[0].getsockname()[1]

    from curator_worker.worker.app import app as celery_app

    flower_app = GuardedFlower(capp=celery_app, options=options, **settings)
    return flower_app, credentials


def _sockname(sock: socket.socket) -> str:
    return str(sock.getsockname()[0])


def main(argv: list[str] | None = None) -> None:
    """Run Flower with our rules (``python -P -m curator_worker.flower_guard [options]``).

    Flower options come as ``--name=value``; credentials only from the environment. Errors
    are one line on stderr and exit status 2.
    """
    sys.path[:] = [p for p in sys.path if p not in ("", ".")]  # never the working directory
    import atexit
    import signal

    import click

    from curator_worker.config import Settings, redact_url

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        settings = Settings.from_env()
        settings.require_cluster()
        flower_app, credentials = _build_app(args)
        port = flower_app.start_http_server()
    except CuratorError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    where = ", ".join(f"http://{h if ':' not in h else f'[{h}]'}:{port}" if port else h
                      for h in flower_app.bound)
    click.echo(f"curator-worker flower: {where} on broker {redact_url(settings.broker_url)}; "
               f"basic auth {'on' if credentials else 'off'}, task API "
               f"{'off' if flower_app.options.read_only else 'on'}", err=True)
    atexit.register(flower_app.stop)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        flower_app.start()
    except (KeyboardInterrupt, SystemExit):
        pass


if __name__ == "__main__":
    main()
