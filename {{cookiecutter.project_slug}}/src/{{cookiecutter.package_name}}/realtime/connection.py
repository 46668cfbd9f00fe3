"""What every WebSocket handler needs around its socket."""

import threading
from contextlib import suppress
from functools import wraps

from flask import current_app, request
from simple_websocket import ConnectionClosed

# https://www.rfc-editor.org/rfc/rfc6455#section-7.4.1
INTERNAL_ERROR = 1011


class SocketWriter:
    """One writer per socket: sends from the hub and from the handler's own
    thread take turns instead of interleaving their frames."""

    def __init__(self, ws) -> None:
        self._ws = ws
        self._lock = threading.Lock()

    def send(self, data: str | bytes) -> None:
        with self._lock:
            self._ws.send(data)

    def deliver(self, data: str | bytes) -> None:
        """`send` for the hub: a socket that is gone is not the sender's problem."""
        with suppress(ConnectionClosed, OSError):
            self.send(data)


def closes_on_error(handler):
    """A handler that fails closes its socket with 1011 and logs the traceback,
    instead of writing an HTTP 500 onto a connection that speaks WebSocket."""

    @wraps(handler)
    def run(ws, *args, **kwargs):
        try:
            return handler(ws, *args, **kwargs)
        except ConnectionClosed:
            raise
        except Exception:
            current_app.logger.exception(
                "WebSocket handler for %s failed", request.path
            )
            with suppress(ConnectionClosed, OSError):
                ws.close(reason=INTERNAL_ERROR, message="internal error")
            return None

    return run
