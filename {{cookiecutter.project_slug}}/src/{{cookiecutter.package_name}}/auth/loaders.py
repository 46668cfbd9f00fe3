"""How Flask-Login finds the user: the session cookie or a bearer token."""

from flask import jsonify, redirect, request, url_for

from ..extensions import db, login_manager
from .models import User
from .tokens import user_id_from_token

login_manager.login_view = "auth.login"
login_manager.login_message = None


@login_manager.user_loader
def load_user_from_session(user_id: str) -> User | None:
    return db.session.get(User, int(user_id)) if user_id.isdigit() else None


@login_manager.request_loader
def load_user_from_bearer_token(req) -> User | None:
    scheme, _, token = req.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    user_id = user_id_from_token(token.strip())
    return db.session.get(User, user_id) if user_id is not None else None


@login_manager.unauthorized_handler
def unauthorized():
    """Pages send people to the login form; everything else gets a 401."""
    wants_html = request.accept_mimetypes.accept_html and not request.headers.get(
        "Authorization"
    )
    if wants_html and request.headers.get("Upgrade", "").lower() != "websocket":
        return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
    return jsonify(error="authentication required"), 401
