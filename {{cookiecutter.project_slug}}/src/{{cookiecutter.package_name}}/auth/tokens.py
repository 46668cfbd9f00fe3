"""Bearer tokens for clients that are not browsers: signed and expiring.

https://itsdangerous.palletsprojects.com/en/stable/timed/
"""

from flask import current_app
from itsdangerous import BadSignature, URLSafeTimedSerializer

_SALT = "bearer-token"


def _serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt=_SALT)


def issue_token(user_id: int) -> str:
    return _serializer().dumps({"uid": user_id})


def user_id_from_token(token: str) -> int | None:
    """The user id the token was issued to, or None when it is forged or expired."""
    try:
        payload = _serializer().loads(
            token, max_age=current_app.config["TOKEN_MAX_AGE"]
        )
    except BadSignature:  # SignatureExpired is a BadSignature too
        return None
    user_id = payload.get("uid") if isinstance(payload, dict) else None
    return user_id if isinstance(user_id, int) else None
