"""How Flask-Login finds the user: the session cookie or a bearer token.

Both carry the credential version the user had when they were issued; one
that no longer matches the account's (after a logout or a password change)
loads no user, so the request is treated as anonymous.
"""

from flask import jsonify, redirect, request, url_for

from .. import logs
from ..extensions import db, login_manager
from .models import User
from .tokens import token_holder

login_manager.login_view = "auth.login"
login_manager.login_message = None


@login_manager.user_loader
def load_user_from_session(session_id: str) -> User | None:
    # The session holds `User.get_id()`: "<id>:<version>".
    user_id, _, version = session_id.partition(":")
    if not (user_id.isdigit() and version.isdigit()):
        return None
    return user_at_version(int(user_id), int(version))


@login_manager.request_loader
def load_user_from_bearer_token(req) -> User | None:
    scheme, _, token = req.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    holder = token_holder(token.strip())
    return user_at_version(*holder) if holder is not None else None


def user_at_version(user_id: int, version: int) -> User | None:
    user = db.session.get(User, user_id)
    if user is None or user.credential_version != version:
        return None
    logs.note_user(user.id)
    return user


@login_manager.unauthorized_handler
def unauthorized():
    """Pages send people to the login form; everything else gets a 401."""
    wants_html = request.accept_mimetypes.accept_html and not request.headers.get(
        "Authorization"
    )
    if wants_html and request.headers.get("Upgrade", "").lower() != "websocket":
        return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
    return jsonify(error="authentication required"), 401
