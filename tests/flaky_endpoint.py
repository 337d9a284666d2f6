"""An S3 endpoint that can be killed and brought back: moto's server behind a TCP proxy.

Killing the proxy resets every open connection and refuses new ones, as when an S3 endpoint or
the network to it dies (:meth:`FlakyEndpoint.stall` instead holds requests and answers late);
the objects live on in moto (in this process), as they would in a real store.
:meth:`FlakyEndpoint.kill_at` kills it at an exact request (before or after the server handled
it), so a test can cut an export at every step. Used by the fault tests and by
``benchmarks/soak.py``.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import suppress
from typing import Any

from moto.moto_server.threaded_moto_server import MotoRequestHandler
from moto.server import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import make_server


class FlakyEndpoint:
    """``url`` is the endpoint clients use; ``down()`` and ``up()`` kill and restore it."""

    def __init__(self) -> None:
        self.requests = 0
        self._kill: tuple[int, bool] | None = None
        self._stalled_until = 0.0
        self._lock = threading.Lock()
        self._server = make_server("127.0.0.1", 0, self._app, threaded=True, request_handler=_QuietHandler)
        self._backend_port = self._server.server_address[1]
        self._moto = DomainDispatcherApplication(create_backend_app)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self._listener: socket.socket | None = None
        self._connections: set[socket.socket] = set()
        self.port = 0
        self.up()
        self.url = f"http://127.0.0.1:{self.port}"

    # --- the S3 server: counts requests and kills the endpoint at the armed one -------------
    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if (wait := self._stalled_until - time.monotonic()) > 0:
            time.sleep(wait)  # a stalled endpoint: it takes the request and answers late
        with self._lock:
            self.requests += 1
            kill = self._kill is not None and self.requests == self._kill[0]
            after = kill and self._kill[1]  # type: ignore[index]
        if kill and not after:
            self.down()
            start_response("503 Service Unavailable", [("Content-Length", "0")])
            return []  # never handled: the client's connection is already gone
        body = list(self._moto(environ, start_response))
        if kill:
            self.down()  # handled, but the client never hears so
        return body

    def stall(self, seconds: float) -> None:
        """Hold every request that arrives in the next ``seconds`` until they are over (a stalled,
        not a dead, endpoint: connections stay open, answers come late)."""
        self._stalled_until = time.monotonic() + seconds

    def kill_at(self, request: int, *, after_handling: bool = False) -> None:
        """Kill the endpoint at the ``request``-th request from now (1 = the next one)."""
        with self._lock:
            self._kill = (self.requests + request, after_handling)

    # --- the proxy ----------------------------------------------------------------------------
    def up(self) -> None:
        """Listen (again, on the same port) and forward to the S3 server."""
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        """Stop listening and reset every open connection."""
        with self._lock:
            self._kill = None
            listener, self._listener = self._listener, None
            connections, self._connections = self._connections, set()
        if listener is not None:
            with suppress(OSError):  # wakes the thread blocked in accept(), so the port is free again
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for conn in connections:
            with suppress(OSError):  # shutdown wakes the pump blocked on it; linger 0 makes close an RST
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.shutdown(socket.SHUT_RDWR)
                conn.close()

    @property
    def is_up(self) -> bool:
        return self._listener is not None

    def close(self) -> None:
        self.down()
        self._server.shutdown()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by down()
            backend = socket.create_connection(("127.0.0.1", self._backend_port))
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    backend.close()
                    return
                self._connections |= {client, backend}
            for source, target in ((client, backend), (backend, client)):
                threading.Thread(target=_pump, args=(source, target), daemon=True).start()


class _QuietHandler(MotoRequestHandler):
    """No line per request on stderr (thousands in a soak run)."""

    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass

    def log_error(self, *args: Any, **kwargs: Any) -> None:
        pass


def _pump(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            target.sendall(data)
    except OSError:
        pass
    finally:
        for conn in (source, target):
            with suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
