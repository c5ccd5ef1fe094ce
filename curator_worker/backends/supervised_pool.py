"""The supervised pool behind the ``process_pool`` backend (see
:mod:`curator_worker.backends.process_pool` for what it guarantees).

Worker side: :func:`worker_main` runs units sent over a pipe and answers ``ready``,
``start i`` / ``done i`` per index and ``batch`` per unit. Parent side: a
:class:`Supervisor` spawns the workers, hands out units, enforces per-index timeouts,
replaces workers that die or are recycled, and re-runs what a lost worker did not finish.
"""

from __future__ import annotations

import logging
import multiprocessing
import pickle
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from curator_worker.backends.local import LocalOptions, LocalRun
from curator_worker.backends.run_result import failure_record
from curator_worker.backends.units import BatchReport, WorkUnit, pipeline_payload, run_unit
from curator_worker.errors import JobFailedError
from curator_worker.outcome import IndexResult, error_record

log = logging.getLogger(__name__)

#: A worker that dies this many times in a row before it is ready means a systemic problem.
MAX_STARTUP_FAILURES = 3
#: Seconds a worker gets to exit after being told to stop, before it is killed.
STOP_GRACE = 5.0
#: Exit code of a spawned worker that re-ran a script without a ``__main__`` guard.
UNGUARDED_MAIN_EXIT = 87
#: What the run says then, once (instead of multiprocessing's RuntimeError per worker).
UNGUARDED_MAIN_MESSAGE = (
    "the script that calls run_pipeline has no `if __name__ == '__main__':` guard. "
    "process_pool starts its workers with spawn, which runs the main script again in each "
    "worker; put the run_pipeline call (and what builds the pipeline) under that guard"
)
#: Longest wait between two looks at the workers (events normally wake the parent sooner).
POLL_CAP = 5.0


# --------------------------------------------------------------------------- worker side


def worker_main(
    conn: Connection, payload: bytes, run_id: str, init_payload: bytes | None
) -> None:
    """Body of a worker process: load the pipeline, run units until told to stop."""
    try:
        pipeline = pickle.loads(payload)
        if init_payload is not None:
            initializer, initargs = pickle.loads(init_payload)
            initializer(*initargs)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent as systemic
        conn.send(("fatal", error_record(exc, kind="error")))
        conn.close()
        return
    conn.send(("ready",))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if message is None:
            conn.close()
            return
        key, indices = message
        report = run_unit(
            pipeline, key, indices, run_id,
            before_index=lambda i: conn.send(("start", i)),
            on_index=lambda r: conn.send(("done", r)),
        )
        conn.send(("batch", report))


# --------------------------------------------------------------------------- parent side


@dataclass
class PoolWorker:
    """The parent's view of one worker process."""

    process: Any
    conn: Connection
    ready: bool = False
    unit: WorkUnit | None = None
    current: int | None = None
    started_at: float = 0.0
    started: list[int] = field(default_factory=list)
    finished: dict[int, IndexResult] = field(default_factory=dict)
    tasks: int = 0

    def assign(self, unit: WorkUnit) -> None:
        self.conn.send((unit.key, list(unit.indices)))
        self.unit = unit
        self.current = None
        self.started = []
        self.finished = {}


def exit_description(exitcode: int | None) -> str:
    if exitcode is None:
        return "was lost"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"was killed by {name}"
    return f"exited with code {exitcode}"


class Supervisor:
    """Runs the units of one :class:`LocalRun` on supervised worker processes."""

    def __init__(self, run: LocalRun, options: LocalOptions) -> None:
        extra = options.extra
        self.run = run
        self.n_jobs = run.n_jobs
        self.timeout: float | None = extra.get("timeout")
        self.max_tasks: int | None = extra.get("max_tasks_per_child")
        self.context = multiprocessing.get_context(extra.get("mp_context") or "spawn")
        self.payload = pipeline_payload(run.pipeline)
        initializer = extra.get("initializer")
        self.init_payload: bytes | None = None
        if initializer is not None:
            import cloudpickle

            self.init_payload = cloudpickle.dumps((initializer, tuple(extra.get("initargs", ()))))
        self.pending: deque[WorkUnit] = deque(run.units)
        self.workers: list[PoolWorker] = []
        self.startup_failures = 0

    # -- lifecycle ------------------------------------------------------------------

    def _spawn(self) -> PoolWorker:
        parent_conn, child_conn = self.context.Pipe(duplex=True)
        process = self.context.Process(
            target=worker_main,
            args=(child_conn, self.payload, self.run.run_id, self.init_payload),
            name="curator-process-pool-worker",
        )
        process.start()
        child_conn.close()  # so the parent sees EOF when the worker dies
        worker = PoolWorker(process, parent_conn)
        self.workers.append(worker)
        log.debug("started worker pid %s", process.pid)
        return worker

    def _discard(self, worker: PoolWorker, kill: bool) -> None:
        if kill and worker.process.is_alive():
            worker.process.kill()
        worker.process.join(STOP_GRACE)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join()
        worker.conn.close()
        if worker in self.workers:
            self.workers.remove(worker)

    def _retire(self, worker: PoolWorker) -> None:
        """Tell an idle worker to exit, and wait for it."""
        try:
            worker.conn.send(None)
        except OSError:
            pass
        self._discard(worker, kill=False)

    def shutdown(self) -> None:
        """Stop every worker: idle ones politely, busy ones by force."""
        for worker in list(self.workers):
            if worker.unit is None and worker.process.is_alive():
                self._retire(worker)
            else:
                self._discard(worker, kill=True)

    # -- the loop -------------------------------------------------------------------

    def execute(self) -> None:
        """Run until every unit is committed or its indices are recorded as failed."""
        try:
            while self.pending or any(w.unit is not None for w in self.workers):
                self._dispatch()
                self._wait()
                for worker in list(self.workers):
                    self._service(worker)
                self._check_timeouts()
        finally:
            self.shutdown()

    def _dispatch(self) -> None:
        for worker in list(self.workers):
            if worker.unit is None and self.pending:
                self._give(worker, self.pending.popleft())
        while self.pending and len(self.workers) < self.n_jobs:
            self._give(self._spawn(), self.pending.popleft())

    def _give(self, worker: PoolWorker, unit: WorkUnit) -> None:
        try:
            worker.assign(unit)
        except OSError:  # the worker died since the parent last looked
            self.pending.appendleft(unit)
            self._discard(worker, kill=True)
            if not worker.ready:
                self._startup_failed(exit_description(worker.process.exitcode))

    def _startup_failed(self, how: str) -> None:
        self.startup_failures += 1
        if self.startup_failures >= MAX_STARTUP_FAILURES:
            self.shutdown()
            raise JobFailedError(
                self.run.run_id, "failed", {},
                f"process_pool worker processes die before they are ready (the last one "
                f"{how}); is the main module guarded by `if __name__ == '__main__':`?",
                in_job_store=False,
            )

    def _wait(self) -> None:
        handles: list[Any] = []
        for worker in self.workers:
            handles += [worker.conn, worker.process.sentinel]
        wait(handles, timeout=self._next_deadline())

    def _next_deadline(self) -> float:
        if self.timeout is None:
            return POLL_CAP
        now = time.monotonic()
        left = [
            w.started_at + self.timeout - now for w in self.workers if w.current is not None
        ]
        return max(0.0, min([POLL_CAP, *left]))

    def _service(self, worker: PoolWorker) -> None:
        """Read everything the worker sent; handle its death."""
        try:
            while worker in self.workers and worker.conn.poll():
                self._handle(worker, worker.conn.recv())
        except (EOFError, OSError):
            self._died(worker)
            return
        if worker in self.workers and not worker.process.is_alive():
            # Dead without EOF yet: everything it sent has been read above.
            self._died(worker)

    def _handle(self, worker: PoolWorker, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "ready":
            worker.ready = True
            self.startup_failures = 0
        elif kind == "start":
            worker.current = message[1]
            worker.started.append(message[1])
            worker.started_at = time.monotonic()
        elif kind == "done":
            result: IndexResult = message[1]
            worker.finished[result.index] = result
            worker.current = None
            self.run.index_finished(result)
        elif kind == "batch":
            report: BatchReport = message[1]
            unit = worker.unit
            assert unit is not None
            worker.unit, worker.current, worker.tasks = None, None, worker.tasks + 1
            self.run.commit(unit, report)
            if self.max_tasks is not None and worker.tasks >= self.max_tasks:
                log.debug("worker pid %s did %d tasks; replacing it", worker.process.pid,
                          worker.tasks)
                self._retire(worker)
        elif kind == "fatal":
            record = message[1]
            self.shutdown()
            raise JobFailedError(
                self.run.run_id, "failed", {},
                f"a process_pool worker could not start ({record['type']}: "
                f"{record['message']}); check the initializer and that the pipeline can be "
                "unpickled in a fresh process", in_job_store=False,
            )

    def _died(self, worker: PoolWorker) -> None:
        self._discard(worker, kill=False)
        if not worker.ready and worker.process.exitcode == UNGUARDED_MAIN_EXIT:
            self.shutdown()
            raise JobFailedError(self.run.run_id, "failed", {}, UNGUARDED_MAIN_MESSAGE,
                                 in_job_store=False) from None
        if worker.unit is None:
            return
        how = exit_description(worker.process.exitcode)
        if not worker.ready:
            self.pending.appendleft(worker.unit)
            self._startup_failed(how)
            return
        self._lost(worker, "crash", f"the worker process {how}")

    def _check_timeouts(self) -> None:
        if self.timeout is None:
            return
        now = time.monotonic()
        for worker in list(self.workers):
            if worker.current is not None and now - worker.started_at > self.timeout:
                self._discard(worker, kill=True)
                self._lost(worker, "timeout", "its worker process was killed")

    def _lost(self, worker: PoolWorker, kind: str, how: str) -> None:
        """A worker was lost mid-unit: fail the index it ran, re-run the rest elsewhere.

        ``kind`` is ``timeout`` or ``crash``; ``how`` says what happened to the process.
        """
        unit = worker.unit
        assert unit is not None
        pid = worker.process.pid
        type_name = "TimeoutError" if kind == "timeout" else "WorkerCrashedError"

        def record(message: str) -> dict[str, Any]:
            return failure_record(kind, type_name, message, pid)

        blamed = worker.current
        if blamed is not None:
            if kind == "timeout":
                message = f"index {blamed} ran longer than {self.timeout:g} s; {how}"
            else:
                message = f"{how} while running index {blamed}"
            self.run.fail(blamed, record(message))
        errored = {i: r for i, r in worker.finished.items() if not r.ok}
        for result in errored.values():
            self.run.fail(result.index, dict(result.error or {}))
        ok = [r for r in worker.finished.values() if r.ok]
        if not self.run.stateful:
            # Nothing is lost with the process: keep what finished, run what did not.
            self.run.commit(unit, BatchReport(unit.key, ok, {}))
            rest = [i for i in unit.indices if i != blamed and i not in worker.finished]
        elif blamed is None and len(worker.started) == len(unit.indices):
            # Every index ran: the worker died writing the batch's filter shards, so the
            # state of its indices is lost with it.
            for result in ok:
                self.run.fail(result.index, record(
                    f"{how} while writing its batch's filter shards after index "
                    f"{result.index} ran; the batch's filter state was lost"))
            rest = []
        else:
            # The unit's filter state died with the worker: redo every index that did not
            # fail, in a fresh process with fresh filter copies.
            rest = [i for i in unit.indices if i != blamed and i not in errored]
        if rest and blamed is None and unit.order[1] >= MAX_STARTUP_FAILURES:
            for index in rest:  # the worker keeps dying between indices: give up on them
                self.run.fail(index, record(f"{how} between indices, {unit.order[1] + 1} times"))
            rest = []
        log.warning("process_pool run %s: batch %s lost (%s, %s); re-running %d of its indices",
                    self.run.run_id, unit.key, kind, how, len(rest))
        if rest:
            self.pending.appendleft(unit.rerun(rest))
