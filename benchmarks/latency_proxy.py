"""A TCP relay that adds a fixed one-way delay: a broker "a network hop away" on loopback.

This kernel has no ``sch_netem``, so latency is added in user space: every chunk read from
one side is written to the other ``delay`` seconds later, in order. Both directions are
delayed, so the round-trip time a client sees is ``2 * delay`` plus loopback.

    proxy = DelayProxy(("127.0.0.1", redis_port), one_way_s=0.0005).start()
    url = f"redis://:pw@127.0.0.1:{proxy.port}/0"   # 1 ms RTT
    ...
    proxy.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import selectors
import threading
import time


class DelayProxy:
    """Relay ``127.0.0.1:<port>`` to ``target`` with ``one_way_s`` added each way.

    Parameters
    ----------
    target : tuple[str, int]
        Host and port to relay to.
    one_way_s : float
        Seconds added to every chunk in each direction.
    listen : tuple[str, int]
        Address and port to listen on (default: a free port of 127.0.0.1).

    The relay's event loop waits in ``select``, whose timeout has microseconds: asyncio's
    default loop waits in ``epoll``, whose timeout is whole milliseconds (rounded up), which
    would turn a 0.5 ms delay into 1-2 ms. A relay has far fewer than ``select``'s 1,024
    descriptors.
    """

    def __init__(self, target: tuple[str, int], one_way_s: float,
                 listen: tuple[str, int] = ("127.0.0.1", 0)) -> None:
        self.target = target
        self.one_way_s = one_way_s
        self.listen = listen
        self.port = 0
        self._loop = asyncio.SelectorEventLoop(selectors.SelectSelector())
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="delay-proxy")
        self._server: asyncio.base_events.Server | None = None

    def start(self) -> DelayProxy:
        """Listen on a free port (``self.port``) and relay in a background thread."""
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._listen(), self._loop)
        self.port = future.result(timeout=10)
        return self

    async def _listen(self) -> int:
        self._server = await asyncio.start_server(self._connection, *self.listen,
                                                  reuse_address=True)
        return int(self._server.sockets[0].getsockname()[1])

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        try:
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer),
                                 return_exceptions=True)
        except asyncio.CancelledError:  # stop(): end quietly (asyncio's stream callback
            writer.close()              # reports a cancelled connection task as an error)
            up_writer.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy ``reader`` to ``writer``, each chunk ``one_way_s`` after it arrived."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    break
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()
            with contextlib.suppress(OSError):
                writer.close()

        sender = asyncio.ensure_future(deliver())
        try:
            while True:
                data = await reader.read(65536)
                queue.put_nowait((time.monotonic() + self.one_way_s, data))
                if not data:
                    break
        except (ConnectionError, OSError):
            queue.put_nowait((0.0, b""))
        await sender

    def stop(self) -> None:
        """Stop listening and stop the relay thread (open connections are dropped)."""
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
