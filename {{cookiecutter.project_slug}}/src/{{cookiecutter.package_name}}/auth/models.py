import secrets
from collections.abc import Iterable
from datetime import UTC, datetime
from functools import cache

from flask_login import UserMixin
from sqlalchemy import DateTime, String, select
from sqlalchemy.orm import Mapped, mapped_column
from werkzeug.security import check_password_hash, generate_password_hash

from ..extensions import db

MIN_PASSWORD_LENGTH = 8


class User(UserMixin, db.Model):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True, index=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=lambda: datetime.now(UTC)
    )
    # Goes into every session and token; raising it (`revoke_credentials`)
    # makes all of them worthless at once, wherever they are.
    credential_version: Mapped[int] = mapped_column(default=0, server_default="0")

    def get_id(self) -> str:
        """What Flask-Login keeps in the session: the id and the version, so
        that a session from before a revocation loads no user.
        https://flask-login.readthedocs.io/en/latest/#alternative-tokens"""
        return f"{self.id}:{self.credential_version}"

    def set_password(self, password: str) -> None:
        self.password_hash = generate_password_hash(password)

    def check_password(self, password: str) -> bool:
        return check_password_hash(self.password_hash, password)

    def revoke_credentials(self) -> None:
        """Void every session and token issued so far; committed by the caller.

        Counted up in SQL rather than in Python, so that two revocations at
        once both count."""
        self.credential_version = User.credential_version + 1

    @classmethod
    def by_email(cls, email: str) -> "User | None":
        statement = select(cls).where(cls.email == email.strip().lower())
        return db.session.scalar(statement)

    @classmethod
    def authenticate(cls, email: str, password: str) -> "User | None":
        user = cls.by_email(email)
        if user is None:
            # As slow as a wrong password, so that the answer's delay does not
            # tell which emails have an account.
            check_password_hash(_unknown_user_hash(), password)
            return None
        return user if user.check_password(password) else None


@cache
def _unknown_user_hash() -> str:
    """The hash of a random password, made the way real ones are (same method
    and cost), once per process."""
    return generate_password_hash(secrets.token_urlsafe(32))


def credential_versions(user_ids: Iterable[int]) -> dict[int, int]:
    """{user id: credential version} of those of `user_ids` that exist."""
    statement = select(User.id, User.credential_version).where(
        User.id.in_(list(user_ids))
    )
    return {user_id: version for user_id, version in db.session.execute(statement)}


class AccountError(ValueError):
    """An account cannot be created or changed as asked; the message says why."""


def check_password_length(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(
            f"the password must be at least {MIN_PASSWORD_LENGTH} characters long"
        )


def create_user(email: str, password: str) -> User:
    email = email.strip().lower()
    check_password_length(password)
    if User.by_email(email) is not None:
        raise AccountError(f"a user with the email {email} already exists")
    user = User(email=email)
    user.set_password(password)
    db.session.add(user)
    db.session.commit()
    return user


def change_password(user: User, password: str) -> None:
    """Set a new password and void every session and token of the user."""
    check_password_length(password)
    user.set_password(password)
    user.revoke_credentials()
    db.session.commit()
