"""A loopback TCP proxy for fault and latency tests: stop it to cut a server off."""

from __future__ import annotations

import socket
import threading
import time


class Proxy:
    """A loopback TCP proxy to a real server that can be stopped and started."""

    def __init__(self, target_port: int, delay: float = 0.0) -> None:
        self.target_port = target_port
        self.delay = delay
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        self._server: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", self.port))
        srv.listen(64)
        self._server = srv
        threading.Thread(target=self._accept, args=(srv,), daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            # close() alone does not wake a thread blocked in accept() on Linux:
            # the port would keep listening. shutdown() does.
            try:
                self._server.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._server.close()
            self._server = None
        with self._lock:
            for c in self._conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                c.close()
            self._conns.clear()

    def _accept(self, srv: socket.socket) -> None:
        while True:
            try:
                client, _ = srv.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
                upstream.settimeout(None)
            except OSError:
                # The server did not take this one: drop the client (it sees a closed
                # connection and retries) and keep accepting; a dead accept thread
                # would leave every later client waiting for a greeting forever.
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b, d in ((client, upstream, self.delay), (upstream, client, 0.0)):
                threading.Thread(target=self._pipe, args=(a, b, d), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket, delay: float) -> None:
        try:
            while data := a.recv(65536):
                if delay:
                    time.sleep(delay)  # added latency per request chunk
                b.sendall(data)
        except OSError:
            pass
        finally:
            # shutdown() before close(): the opposite pipe thread is blocked in
            # recv() on one of these sockets, and a bare close() neither wakes it
            # nor sends FIN while it does. The server would keep the session of a
            # killed client open (PostgreSQL: idle in transaction, holding row
            # locks every other worker then waits on forever).
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                try:
                    s.close()
                except OSError:
                    pass
