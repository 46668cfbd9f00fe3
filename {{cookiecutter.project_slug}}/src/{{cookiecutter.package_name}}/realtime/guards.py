"""The gate in front of every WebSocket route, run before the handshake.

Flask-Sock sends the 101 before it calls the view, so a check inside the view
(`login_required` included) can no longer answer in HTTP: the client would see
a socket that opens and then closes. This `before_request` runs first and
answers 403, 401, 429 or 503 while the connection still speaks HTTP.
"""

from flask import current_app, g, jsonify, request
from flask_login import current_user

from ..extensions import db
from . import bp
from .connections import open_connections
from .session import make_session_read_only
from .user_sockets import UserSockets, UserSocketsUnavailable

# Seconds a refused client waits before it tries again.
RETRY_AFTER_SECONDS = 5


@bp.before_request
def admit_handshake():
    """Check, in this order: the Origin (403), the login (401), the user's
    sockets (429), the worker's room (503). An admitted socket holds a place in
    both counts until its request ends (`release_places`)."""
    if not current_app.config["WS_COMPRESSION"]:
        # Without the client's offer, simple-websocket does not turn on
        # permessage-deflate, which inflates a message before its size is
        # checked (see the README, "Compression").
        request.environ.pop("HTTP_SEC_WEBSOCKET_EXTENSIONS", None)
    if not origin_is_allowed():
        return jsonify(error="origin not allowed"), 403
    if not current_user.is_authenticated:
        return (
            jsonify(error="authentication required"),
            401,
            {"WWW-Authenticate": 'Bearer realm="websocket"'},
        )
    try:
        admitted = user_sockets().acquire(current_user.id)
    except UserSocketsUnavailable as error:
        current_app.logger.warning("refusing a WebSocket: %s", error)
        return refusal("the service is unavailable; retry later", 503)
    if not admitted:
        return refusal(
            f"you hold {user_sockets().limit} WebSockets already; close one first",
            429,
        )
    g.websocket_user = current_user.id
    if not open_connections().reserve():
        # Refuse at once: a socket admitted beyond the worker's capacity would
        # wait for a free thread, and the health checks behind it too.
        return refusal("no room for another WebSocket; retry later", 503)
    g.websocket_slot = True
    # The user is loaded; give the database connection back to the pool now
    # rather than holding it for as long as the socket stays open.
    db.session.close()
    make_session_read_only()
    current_app.logger.info(
        "WebSocket %s opened by %s from %s",
        request.path,
        current_user.email,
        request.remote_addr,
    )
    return None


@bp.teardown_request
def release_places(_error: BaseException | None) -> None:
    """The socket's request is over (closed, or refused after a count)."""
    if g.pop("websocket_slot", False):
        open_connections().release()
    user_id = g.pop("websocket_user", None)
    if user_id is not None:
        user_sockets().release(user_id)


def refusal(message: str, status: int):
    return jsonify(error=message), status, {"Retry-After": str(RETRY_AFTER_SECONDS)}


def user_sockets() -> UserSockets:
    return current_app.extensions["user_sockets"]


def origin_is_allowed() -> bool:
    """Refuse pages from other sites (cross-site WebSocket hijacking).

    Browsers always send Origin on a WebSocket handshake and attach cookies
    whatever page opened it; clients without an Origin are not browsers.
    """
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    allowed = current_app.config["ALLOWED_ORIGINS"] or (
        f"{request.scheme}://{request.host}".lower(),
    )
    return origin.strip().rstrip("/").lower() in allowed
