"""How Flask-Login finds the user: the session cookie or a bearer token.

Both carry the credential version the user had when they were issued; one
that no longer matches the account's (after a logout or a password change)
loads no user, so the request is treated as anonymous.

A WebSocket handshake gets the light `SocketUser` (../realtime/connections.py)
that its handler keeps anyway, from one small query of the three columns it
needs, on a pooled connection without an ORM session (`socket_user`). It is
read from the database on every handshake, as a page's `User` is, so a
credential version revoked a moment ago (by any worker, or by `users
set-password` from a shell) is refused at once: nothing is cached between
requests.
"""

from functools import lru_cache

from flask import jsonify, redirect, request, url_for
from sqlalchemy import Dialect, bindparam, exc, select

from .. import logs
from ..extensions import db, login_manager
from ..realtime.connections import SocketUser
from .models import User
from .tokens import token_holder

# A handshake's query, compiled once for the database's dialect (`socket_user`).
SOCKET_USER = select(User.id, User.email, User.credential_version).where(
    User.id == bindparam("user_id")
)

login_manager.login_view = "auth.login"
login_manager.login_message = None


@login_manager.user_loader
def load_user_from_session(session_id: str) -> User | SocketUser | None:
    # The session holds `User.get_id()`: "<id>:<version>".
    user_id, _, version = session_id.partition(":")
    if not (user_id.isdigit() and version.isdigit()):
        return None
    return user_at_version(int(user_id), int(version))


@login_manager.request_loader
def load_user_from_bearer_token(req) -> User | SocketUser | None:
    scheme, _, token = req.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    holder = token_holder(token.strip())
    return user_at_version(*holder) if holder is not None else None


def user_at_version(user_id: int, version: int) -> User | SocketUser | None:
    """The user, if their credential version is still `version`: a `User`
    for pages, a `SocketUser` for a WebSocket handshake."""
    if (rule := request.url_rule) is not None and rule.websocket:
        user = socket_user(user_id)
    else:
        user = db.session.get(User, user_id)
    if user is None or user.credential_version != version:
        return None
    logs.note_user(user.id)
    return user


def socket_user(user_id: int) -> SocketUser | None:
    """The user's id, email and credential version, by one SELECT on a DB-API
    connection of the engine's pool.

    SQLAlchemy's `Connection` and `Result` around that one query took about
    a twentieth of a handshake's CPU (counted in the template's benchmarks):
    every WebSocket pays it, and a reconnect storm pays it thousands of times
    a second. Everything else stays SQLAlchemy's: the pool (its size and
    timeout, `pool_pre_ping` under PostgreSQL), the SQL, compiled once for
    the dialect, and the errors. A driver's error is raised as SQLAlchemy
    raises it (`OperationalError` for a database that is down, which
    ../errors.py answers with 503), and a connection that was lost is
    dropped from the pool rather than handed to the next request.
    """
    engine = db.engine
    sql, positional = compiled_socket_user(engine.dialect)
    parameters = (user_id,) if positional else {"user_id": user_id}
    driver_error = engine.dialect.loaded_dbapi.Error
    try:
        connection = engine.raw_connection()  # its close() gives it back
    except driver_error as error:  # could not connect
        raise exc.DBAPIError.instance(
            sql, parameters, error, driver_error, dialect=engine.dialect
        ) from error
    try:
        cursor = connection.cursor()
        try:
            cursor.execute(sql, parameters)
            row = cursor.fetchone()
        finally:
            cursor.close()
    except driver_error as error:
        lost = engine.dialect.is_disconnect(error, connection.dbapi_connection, None)
        if lost:
            connection.invalidate(error)
        raise exc.DBAPIError.instance(
            sql,
            parameters,
            error,
            driver_error,
            connection_invalidated=lost,
            dialect=engine.dialect,
        ) from error
    finally:
        connection.close()
    return SocketUser(*row) if row is not None else None


@lru_cache(maxsize=4)
def compiled_socket_user(dialect: Dialect) -> tuple[str, bool]:
    """(SOCKET_USER's SQL in the dialect's parameter style, whether its
    parameters are positional)"""
    compiled = SOCKET_USER.compile(dialect=dialect)
    return str(compiled), compiled.positional


@login_manager.unauthorized_handler
def unauthorized():
    """Pages send people to the login form; everything else gets a 401."""
    wants_html = request.accept_mimetypes.accept_html and not request.headers.get(
        "Authorization"
    )
    if wants_html and request.headers.get("Upgrade", "").lower() != "websocket":
        return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
    return jsonify(error="authentication required"), 401
