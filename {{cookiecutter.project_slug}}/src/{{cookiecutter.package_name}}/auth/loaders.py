"""How Flask-Login finds the user: the session cookie or a bearer token.

Both carry the credential version the user had when they were issued; one
that no longer matches the account's (after a logout or a password change)
loads no user, so the request is treated as anonymous.

A WebSocket handshake gets the light `SocketUser` (../realtime/connections.py)
that its handler keeps anyway, from one small query of the three columns it
needs, on a pooled connection without an ORM session. It is read from the
database on every handshake, as a page's `User` is, so a credential version
revoked a moment ago (by any worker, or by `users set-password` from a shell)
is refused at once: nothing is cached between requests.
"""

from flask import jsonify, redirect, request, url_for
from sqlalchemy import bindparam, select

from .. import logs
from ..extensions import db, login_manager
from ..realtime.connections import SocketUser
from .models import User
from .tokens import token_holder

# Built once: SQLAlchemy caches its compiled form too.
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
    if request.url_rule is not None and request.url_rule.websocket:
        user = socket_user(user_id)
    else:
        user = db.session.get(User, user_id)
    if user is None or user.credential_version != version:
        return None
    logs.note_user(user.id)
    return user


def socket_user(user_id: int) -> SocketUser | None:
    with db.engine.connect() as connection:
        row = connection.execute(SOCKET_USER, {"user_id": user_id}).first()
    return SocketUser(*row) if row is not None else None


@login_manager.unauthorized_handler
def unauthorized():
    """Pages send people to the login form; everything else gets a 401."""
    wants_html = request.accept_mimetypes.accept_html and not request.headers.get(
        "Authorization"
    )
    if wants_html and request.headers.get("Upgrade", "").lower() != "websocket":
        return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
    return jsonify(error="authentication required"), 401
