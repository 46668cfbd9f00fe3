"""The session inside a WebSocket handler can be read, never saved.

A session change travels in the response's Set-Cookie header, and the only
response a WebSocket gets is the 101 of the handshake, sent before the handler
runs. A change made by a handler would be dropped without a word; here it is
loud instead: a warning in the log, and under debug and tests an exception
raised on the line that made the change.
"""

from flask import Flask, Request, current_app, request, session
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface

UNSAVED_CHANGE = (
    "the session was changed inside the WebSocket handler of %s; the change "
    "cannot be saved because a WebSocket has no response to carry the cookie. "
    "Change the session in an HTTP view (before opening the socket) instead."
)


class SessionChangeNotSaved(RuntimeError):
    pass


class WebSocketSession(SecureCookieSession):
    def __init__(self, initial=None) -> None:
        super().__init__(initial)
        self.read_only = False
        self.reported = False

        def on_update(changed: "WebSocketSession") -> None:
            changed.modified = True
            changed.accessed = True
            if changed.read_only:
                changed.report_unsaved_change()

        self.on_update = on_update

    def report_unsaved_change(self) -> None:
        if current_app.debug or current_app.testing:
            raise SessionChangeNotSaved(UNSAVED_CHANGE % request.path)
        if not self.reported:
            self.reported = True
            current_app.logger.warning(UNSAVED_CHANGE, request.path)


class WebSocketSessionInterface(SecureCookieSessionInterface):
    def open_session(self, app: Flask, request: Request):
        opened = super().open_session(app, request)
        if opened is None or not is_websocket(request):
            return opened
        return WebSocketSession(opened)


def is_websocket(req: Request) -> bool:
    return req.headers.get("Upgrade", "").lower() == "websocket"


def make_session_read_only() -> None:
    """From here on, a change to the session is reported (see the module doc)."""
    opened = session._get_current_object()
    if isinstance(opened, WebSocketSession):
        opened.read_only = True
