"""A database that cannot be reached answers 503 with `Retry-After`, not 500.

An outage is not a bug of the app: the client is told to come back, the log
gets one warning line and no traceback, and the first request after the
database returns works (the engine's `pool_pre_ping` replaces the dead
connections).
"""

from flask import Flask, current_app, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy import exc

from .extensions import db

# Long enough not to hammer a database that is restarting, short enough that
# clients come back soon after it does (a restart or failover takes seconds).
RETRY_AFTER_SECONDS = 5

# What SQLAlchemy raises when it cannot connect, loses the connection, or
# waits in vain for a free connection of the pool.
DATABASE_UNREACHABLE = (exc.OperationalError, exc.InterfaceError, exc.TimeoutError)

MESSAGE = "the database is unavailable; retry later"


def register_error_handlers(app: Flask) -> None:
    for error_class in DATABASE_UNREACHABLE:
        app.register_error_handler(error_class, database_unavailable)


def database_unavailable(error: exc.SQLAlchemyError) -> ResponseReturnValue:
    current_app.logger.warning(
        "database unavailable: %s (%s %s answered 503)",
        first_line(error),
        request.method,
        request.path,
    )
    # The session may hold an aborted transaction or a dead connection; drop
    # it now so nothing of this request leaks into the next one.
    db.session.remove()
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
    if wants_json():
        return jsonify(error=MESSAGE), 503, headers
    # Not render_template: its context processors load `current_user` (from
    # the database that just failed) and build forms; this page needs neither.
    page = current_app.jinja_env.get_template("errors/unavailable.html")
    return page.render(retry_after=RETRY_AFTER_SECONDS), 503, headers


def wants_json() -> bool:
    """Programs get JSON: token requests, WebSocket handshakes, and clients
    that authenticate by header or ask for JSON. Browsers get the page."""
    # Imported here, not with the module: gunicorn's master imports this
    # package, and must not import prometheus-client (which the realtime
    # package does) before gunicorn.conf.py has chosen its folder.
    from .realtime.session import is_websocket

    if request.endpoint == "auth.token" or is_websocket(request):
        return True
    if request.headers.get("Authorization"):
        return True
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json"


def first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
