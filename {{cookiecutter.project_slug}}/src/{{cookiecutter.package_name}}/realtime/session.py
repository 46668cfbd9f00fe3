"""The session inside a WebSocket handler can be read, never saved.

A session change travels in the response's Set-Cookie header, and the only
response a WebSocket gets is the 101 of the handshake, sent before the handler
runs. A change made by a handler would be dropped without a word; here it is
loud instead: a warning in the log, and under debug and tests an exception
raised on the line that made the change.
"""

from flask import Flask, Request, current_app, request, session
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from itsdangerous import URLSafeTimedSerializer

UNSAVED_CHANGE = (
    "the session was changed inside the WebSocket handler of %s; the change "
    "cannot be saved because a WebSocket has no response to carry the cookie. "
    "Change the session in an HTTP view (before opening the socket) instead."
)


class SessionChangeNotSaved(RuntimeError):
    pass


class WebSocketSession(SecureCookieSession):
    """Flask's session, which a WebSocket handler can turn read-only.

    Every request's session is one (the interface's `session_class`): an
    HTTP request never turns it read-only, so it behaves as Flask's own,
    and a handshake's needs no copy. A socket keeps its session for as long
    as it is open, so what it adds lives in the class (`on_update`, and
    `read_only` and `reported` until they are set), not in each session.
    """

    read_only = False
    reported = False

    def __init__(self, initial=None) -> None:
        super().__init__(initial)
        # Flask's own `on_update`, a function made for every session, gives
        # way to the method below.
        del self.on_update

    def on_update(self, changed: "WebSocketSession") -> None:
        self.modified = True
        self.accessed = True
        if self.read_only:
            self.report_unsaved_change()

    def report_unsaved_change(self) -> None:
        if current_app.debug or current_app.testing:
            raise SessionChangeNotSaved(UNSAVED_CHANGE % request.path)
        if not self.reported:
            self.reported = True
            current_app.logger.warning(UNSAVED_CHANGE, request.path)


class WebSocketSessionInterface(SecureCookieSessionInterface):
    session_class = WebSocketSession
    # The keys of the last serializer made, and the serializer.
    _signing: tuple[tuple, URLSafeTimedSerializer | None] = ((), None)

    def get_signing_serializer(self, app: Flask) -> URLSafeTimedSerializer | None:
        """Flask's, made once for as long as the keys stay, rather than twice
        on every request (to open the session and to save it): a handshake
        with a bearer token has no cookie, and still paid for it."""
        keys = (app.secret_key, tuple(app.config.get("SECRET_KEY_FALLBACKS") or ()))
        made_for, serializer = self._signing
        if made_for != keys:
            serializer = super().get_signing_serializer(app)
            # One assignment of a pair: another thread sees the old pair or
            # the new one.
            self._signing = (keys, serializer)
        return serializer


def is_websocket(req: Request) -> bool:
    return req.headers.get("Upgrade", "").lower() == "websocket"


def make_session_read_only() -> None:
    """From here on, a change to the session is reported (see the module doc)."""
    opened = session._get_current_object()
    if isinstance(opened, WebSocketSession):
        opened.read_only = True
