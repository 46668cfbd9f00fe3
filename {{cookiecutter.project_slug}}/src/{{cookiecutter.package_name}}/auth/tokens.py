"""Bearer tokens for clients that are not browsers: signed and expiring.

A token carries the user's credential version, so that logging out or a
password change voids it before it expires.
https://itsdangerous.palletsprojects.com/en/stable/timed/
"""

from functools import lru_cache

from flask import current_app
from itsdangerous import BadSignature, URLSafeTimedSerializer

_SALT = "bearer-token"


def _serializer() -> URLSafeTimedSerializer:
    return _serializer_for(current_app.config["SECRET_KEY"])


@lru_cache(maxsize=4)
def _serializer_for(secret_key: str) -> URLSafeTimedSerializer:
    """Made once per key, not on every handshake: it holds nothing that
    changes from one token to the next."""
    return URLSafeTimedSerializer(secret_key, salt=_SALT)


def issue_token(user_id: int, credential_version: int) -> str:
    return _serializer().dumps({"uid": user_id, "ver": credential_version})


def token_holder(token: str) -> tuple[int, int] | None:
    """(user id, credential version) the token was issued for, or None when it
    is forged, expired, or from before versions were carried."""
    try:
        payload = _serializer().loads(
            token, max_age=current_app.config["TOKEN_MAX_AGE"]
        )
    except BadSignature:  # SignatureExpired is a BadSignature too
        return None
    if not isinstance(payload, dict):
        return None
    user_id, version = payload.get("uid"), payload.get("ver")
    if isinstance(user_id, int) and isinstance(version, int):
        return user_id, version
    return None
