"""Accounts: the user model, the login pages, bearer tokens and the CLI."""

from flask import Blueprint

bp = Blueprint("auth", __name__, url_prefix="/auth")

from . import limits, loaders, views  # noqa: E402,F401  (they register on bp and login_manager)
