"""Accounts: the user model, the login pages, bearer tokens and the CLI."""

from . import loaders  # noqa: F401  (it registers the user loaders on login_manager)
from .views import bp

__all__ = ["bp"]
