"""Rate limits on trying passwords: per client address and per account.

Every POST to a page that checks or sets a password (log in, register,
change password, token) counts twice, against the client's address and
against the account it names; past either limit it is refused with 429 and
Retry-After before any password is hashed. The limits are settings
(AUTH_LIMIT_PER_ADDRESS, AUTH_LIMIT_PER_ACCOUNT); Flask-Limiter keeps the
counts (config.py says where). Each limit is shared: tries on the login
form and on /auth/token add up.
https://flask-limiter.readthedocs.io/en/stable/recipes.html#shared-limits
"""

import math
import time

from flask import (
    current_app,
    flash,
    jsonify,
    make_response,
    render_template,
    request,
)
from flask_limiter import RateLimitExceeded
from flask_login import current_user

from ..extensions import limiter
from .forms import ChangePasswordForm, LoginForm, RegisterForm

# The form pages re-rendered, with the message, when their POST is refused.
FORM_PAGES = {
    "auth.login": ("auth/login.html", LoginForm),
    "auth.register": ("auth/register.html", RegisterForm),
    "auth.password": ("auth/password.html", ChangePasswordForm),
}


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
    # Never empty: Flask-Limiter skips a limit whose key is empty.
    return account.strip().lower() or "(none)"


# Only POSTs: showing a form costs nothing and tries nothing.
per_address = limiter.shared_limit(
    lambda: current_app.config["AUTH_LIMIT_PER_ADDRESS"],
    scope="auth-address",
    methods=["POST"],
)
per_account = limiter.shared_limit(
    lambda: current_app.config["AUTH_LIMIT_PER_ACCOUNT"],
    scope="auth-account",
    key_func=tried_account,
    methods=["POST"],
)


def too_many_attempts(error: RateLimitExceeded):
    """The blueprint's handler of RateLimitExceeded (views.py)."""
    retry_after = seconds_until_allowed()
    current_app.logger.warning(
        "too many attempts at %s from %s (%s); refused for %d s",
        request.path,
        request.remote_addr,
        error.description,
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


def seconds_until_allowed() -> int:
    """Whole seconds until the limit this request broke lets one more in."""
    broken = limiter.current_limit
    if broken is None:
        return 60
    return max(1, math.ceil(broken.window.reset_time - time.time()))
