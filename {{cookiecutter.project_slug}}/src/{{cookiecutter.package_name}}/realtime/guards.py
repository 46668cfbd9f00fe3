"""How a WebSocket route is declared, and the gate in front of it.

Flask-Sock sends the 101 before it calls the view, so a check inside the view
(`login_required` included) can no longer answer in HTTP: the client would see
a socket that opens and then closes. The gate is a `before_request` instead,
and answers 401, 403, 429 or 503 while the connection still speaks HTTP.
Before any of it, a worker takes on only so many handshakes at once
(`HANDSHAKES_AT_ONCE`, connections.py): a storm of them gets quick 503s
rather than every handshake slowing down together.

The gate knows a route by the way it was declared: with `websocket_route`. A
route declared with a plain `sock.route` would skip it (and the release of its
places), so a handshake there is refused with 500 and an error in the log.
"""

from flask import Blueprint, current_app, g, jsonify, request
from flask_login import current_user, login_required

from .. import metrics
from ..extensions import db, sock
from .connections import open_connections, websocket_handler
from .session import make_session_read_only
from .user_sockets import UserSockets, UserSocketsUnavailable

# Seconds a refused client waits before it tries again.
RETRY_AFTER_SECONDS = 5
# The mark of a view declared by `websocket_route`. Flask-Sock's view carries
# it over from the function it wraps (functools.wraps copies `__dict__`).
DECLARED = "declared_by_websocket_route"


def websocket_route(path: str, bp: Blueprint | None = None, **options):
    """Declare a WebSocket route, as Flask-Sock's `sock.route` does, with all
    a route needs: `admit_by_origin_login_and_room` before the 101, then
    `login_required`, then `websocket_handler` (connections.py), which calls
    `handler(connection, **url_values)`; `release_places` once it is over.
    The package's docstring (`__init__.py`) follows a handshake step by step.
    """

    def declare(handler):
        view = login_required(websocket_handler(handler))
        setattr(view, DECLARED, True)
        sock.route(path, bp=bp, **options)(view)
        return handler

    return declare


def before_websocket_handshake():
    """The app's `before_request`: refuse a WebSocket route that was not
    declared with `websocket_route`, then admit or refuse the handshake."""
    rule = request.url_rule
    if rule is None or not rule.websocket:
        return None
    app = current_app._get_current_object()  # looked up once, not three times
    if not getattr(app.view_functions[rule.endpoint], DECLARED, False):
        app.logger.error(
            "refusing a WebSocket on %s: its route was declared with sock.route; "
            "declare it with websocket_route (realtime/guards.py)",
            request.path,
        )
        return jsonify(error="this WebSocket route is misconfigured"), 500
    # First, before any work that a storm of handshakes would multiply.
    if not app.extensions["open_connections"].begin_handshake():
        metrics.HANDSHAKES[metrics.OVER_CAPACITY].inc()
        return refusal("too many WebSockets opening at once; retry later", 503)
    g.websocket_handshake = True
    if not app.config["WS_COMPRESSION"]:
        # Without the client's offer, simple-websocket does not turn on
        # permessage-deflate, which inflates a message before its size is
        # checked (docs/websockets.md, "Inflate memory").
        request.environ.pop("HTTP_SEC_WEBSOCKET_EXTENSIONS", None)
    return admit_by_origin_login_and_room()


def admit_by_origin_login_and_room():
    """Check, in this order: the Origin (403), the login (401), the user's
    sockets (429), the worker's room (503). An admitted socket holds a place in
    both counts until its request ends (`release_places`), and its session is
    read-only from here on (session.py)."""
    if not origin_is_allowed():
        metrics.HANDSHAKES[metrics.FORBIDDEN_ORIGIN].inc()
        return jsonify(error="origin not allowed"), 403
    # Loaded here (../auth/loaders.py); then looked up once, not at each use.
    user = current_user._get_current_object()
    if not user.is_authenticated:
        metrics.HANDSHAKES[metrics.UNAUTHENTICATED].inc()
        return (
            jsonify(error="authentication required"),
            401,
            {"WWW-Authenticate": 'Bearer realm="websocket"'},
        )
    try:
        admitted = user_sockets().acquire(user.id)
    except UserSocketsUnavailable as error:
        current_app.logger.warning("refusing a WebSocket: %s", error)
        metrics.HANDSHAKES[metrics.UNAVAILABLE].inc()
        return refusal("the service is unavailable; retry later", 503)
    if not admitted:
        metrics.HANDSHAKES[metrics.OVER_USER_LIMIT].inc()
        return refusal(
            f"you hold {user_sockets().limit} WebSockets already; close one first",
            429,
        )
    g.websocket_user = user.id
    if not open_connections().reserve():
        # Refuse at once: a socket admitted beyond the worker's capacity would
        # wait for a free thread, and the health checks behind it too.
        metrics.HANDSHAKES[metrics.OVER_CAPACITY].inc()
        return refusal("no room for another WebSocket; retry later", 503)
    g.websocket_slot = True
    metrics.HANDSHAKES[metrics.ACCEPTED].inc()
    # The user is loaded; give the database connection back to the pool now
    # rather than holding it for as long as the socket stays open. `remove`,
    # not `close`: the request's Session object itself (a kilobyte or two)
    # would otherwise stay in the scoped registry for the socket's life.
    db.session.remove()
    make_session_read_only()
    current_app.logger.info(
        "WebSocket %s opened by %s from %s",
        request.path,
        user.email,
        request.remote_addr,
    )
    return None


def release_places(_error: BaseException | None) -> None:
    """The app's `teardown_request`: the socket's request is over (closed, or
    refused after a count), so its places go back."""
    request_globals = g._get_current_object()  # looked up once, not three times
    handshake = request_globals.pop("websocket_handshake", False)
    slot = request_globals.pop("websocket_slot", False)
    user_id = request_globals.pop("websocket_user", None)
    if not (handshake or slot or user_id is not None):
        return  # a page's request
    connections = open_connections()
    if handshake:  # ended before its socket opened
        connections.end_handshake()
    if slot:
        connections.release()
    if user_id is not None:
        user_sockets().release(user_id, worker_stopping=connections.stopping)


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
