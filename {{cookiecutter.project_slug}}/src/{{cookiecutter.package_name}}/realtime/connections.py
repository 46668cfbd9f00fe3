"""The sockets this worker holds: one writer at a time on each, a count
against the worker's capacity, and a clean close when the worker stops."""

import threading
from contextlib import suppress
from functools import wraps

from flask import current_app, request
from simple_websocket import ConnectionClosed

# https://www.rfc-editor.org/rfc/rfc6455#section-7.4.1
GOING_AWAY = 1001
INTERNAL_ERROR = 1011
SHUTTING_DOWN = "server shutting down"


class Connection:
    """A WebSocket whose sends take turns: the handler's own, the hub's
    deliveries from other threads, and the close at shutdown never interleave
    their frames."""

    def __init__(self, ws) -> None:
        self._ws = ws
        self._lock = threading.Lock()

    def receive(self, timeout: float | None = None) -> str | bytes | None:
        return self._ws.receive(timeout)

    def send(self, data: str | bytes) -> None:
        with self._lock:
            self._ws.send(data)

    def deliver(self, data: str | bytes) -> None:
        """`send` for the hub: a socket that is gone is not the sender's problem."""
        with suppress(ConnectionClosed, OSError):
            self.send(data)

    def close(self, code: int, reason: str) -> None:
        with self._lock, suppress(ConnectionClosed, OSError):
            self._ws.close(reason=code, message=reason)


class OpenConnections:
    """Counts the sockets of this worker and closes them all on the way out."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._reserved = 0
        self._open: set[Connection] = set()
        self._stopping = False

    def reserve(self) -> bool:
        """Take a slot before the handshake; False when none is left."""
        with self._lock:
            if self._stopping or self._reserved >= self.capacity:
                return False
            self._reserved += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._reserved -= 1

    def add(self, connection: Connection) -> None:
        with self._lock:
            self._open.add(connection)
            stopping = self._stopping
        if stopping:  # admitted just before the worker was told to stop
            connection.close(GOING_AWAY, SHUTTING_DOWN)

    def discard(self, connection: Connection) -> None:
        with self._lock:
            self._open.discard(connection)

    def close_all(self, reason: str = SHUTTING_DOWN) -> int:
        """Close every socket with 1001 and admit no more; returns how many."""
        with self._lock:
            self._stopping = True
            connections = list(self._open)
        for connection in connections:
            connection.close(GOING_AWAY, reason)
        return len(connections)


def open_connections() -> OpenConnections:
    return current_app.extensions["open_connections"]


def websocket_handler(handler):
    """Run `handler(connection)` for an accepted socket.

    The connection is counted for the shutdown close, and a handler that fails
    closes its socket with 1011 and logs the traceback, instead of writing an
    HTTP 500 onto a connection that already speaks WebSocket.
    """

    @wraps(handler)
    def run(ws, *args, **kwargs):
        connection = Connection(ws)
        registry = open_connections()
        registry.add(connection)
        try:
            return handler(connection, *args, **kwargs)
        except ConnectionClosed:
            raise
        except Exception:
            current_app.logger.exception(
                "WebSocket handler for %s failed", request.path
            )
            connection.close(INTERNAL_ERROR, "internal error")
            return None
        finally:
            registry.discard(connection)

    return run
