"""Accounts: the user model, the login pages, bearer tokens and the CLI."""

from flask import Flask

# loaders registers the user loaders on login_manager.
from . import limits, loaders  # noqa: F401
from .views import bp

__all__ = ["bp", "init_app"]


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
    limits.init_app(app)
