"""A TCP relay in the root namespace, so test-cloud hosts reach a server on 127.0.0.1.

The hosts of ``tests/support/testcloud`` see the root namespace only through the bridge's
gateway addresses; moto (S3 for checkpoints) listens on 127.0.0.1. ``Relay`` listens on
given addresses and copies bytes both ways to the target, one thread per direction.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType


class Relay:
    """Listen on ``(address, port)`` for each address; forward to ``target``."""

    def __init__(self, addresses: list[str], target: tuple[str, int]) -> None:
        self.target = target
        self._servers: list[socket.socket] = []
        self._closed = threading.Event()
        self.port = 0
        for address in addresses:
            server = socket.create_server((address, self.port))
            self.port = server.getsockname()[1]  # the same port on every address
            self._servers.append(server)

    def __enter__(self) -> Relay:
        for server in self._servers:
            threading.Thread(target=self._accept, args=(server,), daemon=True).start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closed.set()
        for server in self._servers:
            with contextlib.suppress(OSError):
                server.shutdown(socket.SHUT_RDWR)
            server.close()

    def _accept(self, server: socket.socket) -> None:
        while not self._closed.is_set():
            try:
                client, _ = server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    """Copy until ``source`` ends, then end ``sink``'s writing half (the reply still flows)."""
    try:
        while data := source.recv(65536):
            sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
    except OSError:
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
