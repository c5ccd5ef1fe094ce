"""The benchmarks' delay relay adds its delay each way and keeps bytes in order."""

from __future__ import annotations

import socket
import threading
import time

from benchmarks.latency_proxy import DelayProxy


def test_relay_adds_the_round_trip_and_keeps_order() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def echo() -> None:
        conn, _ = server.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    threading.Thread(target=echo, daemon=True).start()
    proxy = DelayProxy(server.getsockname(), one_way_s=0.02).start()
    try:
        with socket.create_connection(("127.0.0.1", proxy.port)) as client:
            payload = bytes(range(256)) * 400
            begin = time.monotonic()
            client.sendall(payload)
            got = b""
            while len(got) < len(payload):
                got += client.recv(65536)
            elapsed = time.monotonic() - begin
        assert got == payload
        assert elapsed >= 0.04  # 20 ms each way
    finally:
        proxy.stop()
        server.close()
