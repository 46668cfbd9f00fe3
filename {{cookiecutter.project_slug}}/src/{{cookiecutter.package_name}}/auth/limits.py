"""Rate limits on trying passwords: per client address and per account.

Every POST to a page that checks or sets a password (log in, register,
change password, token) counts twice, against the client's address and
against the account it names; past either limit it is refused with 429 and
Retry-After before any password is hashed. The limits are settings
(AUTH_LIMIT_PER_ADDRESS, AUTH_LIMIT_PER_ACCOUNT). Each limit is shared:
tries on the login form and on /auth/token add up.

The `limits` library keeps the counts, in a moving window (a fixed one lets
twice the limit through across the turn of a minute), where config.py says:
Redis, shared by every worker and instance, or the worker's memory. While
Redis does not answer, each worker counts in its own memory rather than
refuse every login, and tries Redis again every STORAGE_RETRY_SECONDS.
https://limits.readthedocs.io/en/stable/strategies.html#moving-window

Only the views that check a password run any of this: `limit_attempts`
wraps each of them. A rate-limiting extension's hook would run before every
request, every page and every WebSocket handshake, to find it had nothing
to count: 6 % of the instructions of a handshake, measured with
Flask-Limiter.
"""

import functools
import math
import time
from logging import Logger

from flask import (
    Flask,
    current_app,
    flash,
    jsonify,
    make_response,
    render_template,
    request,
)
from flask_login import current_user
from limits import RateLimitItem, parse_many
from limits.errors import StorageError
from limits.storage import MemoryStorage, Storage, storage_from_string
from limits.strategies import MovingWindowRateLimiter

from .forms import ChangePasswordForm, LoginForm, RegisterForm

# Seconds a worker counts in its memory before it tries Redis again.
STORAGE_RETRY_SECONDS = 5
ADDRESS, ACCOUNT = "auth-address", "auth-account"

# The form pages re-rendered, with the message, when their POST is refused.
FORM_PAGES = {
    "auth.login": ("auth/login.html", LoginForm),
    "auth.register": ("auth/register.html", RegisterForm),
    "auth.password": ("auth/password.html", ChangePasswordForm),
}


class TooManyAttempts(Exception):
    """A try past `limit`; `retry_after`: whole seconds until it lets one more
    in."""

    def __init__(self, limit: RateLimitItem, retry_after: int) -> None:
        super().__init__(f"{limit}; retry after {retry_after} s")
        self.limit = limit
        self.retry_after = retry_after


class AttemptCounts:
    """The tries counted against each limit: in the storage config.py names,
    or in the worker's memory while that storage does not answer."""

    def __init__(
        self,
        storage: Storage,
        prefix: str,
        per_address: list[RateLimitItem],
        per_account: list[RateLimitItem],
        logger: Logger,
    ) -> None:
        self._shared = MovingWindowRateLimiter(storage)
        self._memory = (
            self._shared
            if isinstance(storage, MemoryStorage)
            else MovingWindowRateLimiter(MemoryStorage())
        )
        self._prefix = prefix
        self._limits = ((ADDRESS, per_address), (ACCOUNT, per_account))
        self._logger = logger
        # Set while the shared storage is away: when to try it again.
        self._retry_shared_at: float | None = None

    def count(self, address: str, account: str) -> None:
        """Count one try against every limit, the address's first; raise
        TooManyAttempts at the first that refuses it (the rest are not
        counted)."""
        keys = {ADDRESS: address, ACCOUNT: account}
        retry_at = self._retry_shared_at
        if retry_at is not None and time.monotonic() < retry_at:
            self._count(self._memory, keys)
            return
        try:
            self._count(self._shared, keys)
        except StorageError as error:
            if retry_at is None:
                self._logger.warning(
                    "cannot count password tries in Redis (%s); each worker "
                    "counts in its own memory until it answers",
                    error.storage_error,
                )
            self._retry_shared_at = time.monotonic() + STORAGE_RETRY_SECONDS
            self._count(self._memory, keys)
            return
        if retry_at is not None:
            self._retry_shared_at = None
            self._logger.warning("counting password tries in Redis again")

    def _count(self, limiter: MovingWindowRateLimiter, keys: dict[str, str]) -> None:
        for scope, limits in self._limits:
            for limit in limits:
                if not limiter.hit(limit, self._prefix, scope, keys[scope]):
                    window = limiter.get_window_stats(
                        limit, self._prefix, scope, keys[scope]
                    )
                    wait = max(1, math.ceil(window.reset_time - time.time()))
                    raise TooManyAttempts(limit, wait)


def init_app(app: Flask) -> None:
    config = app.config
    app.extensions["attempt_counts"] = AttemptCounts(
        # Its errors as limits' StorageError, whatever the storage's driver.
        storage_from_string(
            config["ATTEMPTS_STORAGE_URI"],
            wrap_exceptions=True,
            **config.get("ATTEMPTS_STORAGE_OPTIONS", {}),
        ),
        prefix=config["ATTEMPTS_KEY_PREFIX"],
        per_address=parse_many(config["AUTH_LIMIT_PER_ADDRESS"]),
        per_account=parse_many(config["AUTH_LIMIT_PER_ACCOUNT"]),
        logger=app.logger,
    )


def limit_attempts(view):
    """Count each POST to `view` against both limits before it runs. Only
    POSTs: showing a form costs nothing and tries nothing."""

    @functools.wraps(view)
    def counted(*args, **kwargs):
        if request.method == "POST":
            current_app.extensions["attempt_counts"].count(
                address=request.remote_addr or "(none)", account=tried_account()
            )
        return view(*args, **kwargs)

    return counted


def tried_account() -> str:
    """The account a request tries: the token request's Basic user name, the
    form's email, or the logged-in user's (changing a password)."""
    if request.authorization is not None:
        account = request.authorization.username or ""
    elif "email" in request.form:
        account = request.form["email"]
    elif current_user.is_authenticated:
        account = current_user.email
    else:
        account = ""
    # Tries that name no account count together, as "(none)".
    return account.strip().lower() or "(none)"


def too_many_attempts(error: TooManyAttempts):
    """The blueprint's handler of TooManyAttempts (views.py)."""
    retry_after = error.retry_after
    current_app.logger.warning(
        "too many attempts at %s from %s (%s); refused for %d s",
        request.path,
        request.remote_addr,
        error.limit,
        retry_after,
    )
    page = FORM_PAGES.get(request.endpoint)
    if page is None or request.is_json:
        response = jsonify(error="too many attempts", retry_after=retry_after)
    else:
        template, form_class = page
        flash(f"Too many attempts; try again in {retry_after} seconds.")
        # The form as it was sent (its email kept), without error marks.
        response = make_response(render_template(template, form=form_class()))
    response.status_code = 429
    response.headers["Retry-After"] = str(retry_after)
    return response
