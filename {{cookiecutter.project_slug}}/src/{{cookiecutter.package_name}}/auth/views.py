from urllib.parse import unquote, urlsplit

from flask import (
    Blueprint,
    current_app,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_login import current_user, login_required, login_user, logout_user

from ..extensions import csrf, db
from ..realtime.revocations import close_revoked_sockets
from .forms import ChangePasswordForm, LoginForm, LogoutForm, RegisterForm
from .limits import TooManyAttempts, limit_attempts, too_many_attempts
from .models import AccountError, User, change_password, create_user
from .tokens import issue_token

bp = Blueprint("auth", __name__, url_prefix="/auth")
bp.register_error_handler(TooManyAttempts, too_many_attempts)

# `next` decoded this many times and still not plain is refused, not decoded on.
MAX_DECODES = 4


def _safe_next(target: str | None) -> str:
    """Where to go after logging in: `target` when it is a path of this site,
    else the demo page."""
    if target and _is_local_path(target):
        return target
    return url_for("pages.index")


def _is_local_path(target: str) -> bool:
    # Checked as given and as every decoding of it: a proxy, a framework or
    # the page at the target may decode it once more, and `/%2F%2Fhost`
    # becomes `///host`, which browsers read as http://host/.
    value = target
    for _ in range(MAX_DECODES):
        if not _is_plain_path(value):
            return False
        decoded = unquote(value)
        if decoded == value:
            return True
        value = decoded
    return False


def _is_plain_path(value: str) -> bool:
    # Browsers read `//host`, `///host` and `/\host` as another host, treat
    # `\` as `/`, and drop tabs and newlines before parsing.
    if not value.startswith("/") or value[1:2] in ("/", "\\") or "\\" in value:
        return False
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in value):
        return False
    parts = urlsplit(value)
    return not parts.scheme and not parts.netloc


@bp.app_context_processor
def inject_logout_form() -> dict:
    """Every page with the header's logout button needs its CSRF token."""
    return {"logout_form": LogoutForm()}


@bp.route("/login", methods=["GET", "POST"])
@limit_attempts
def login():
    form = LoginForm()
    if form.validate_on_submit():
        user = User.authenticate(form.email.data, form.password.data)
        if user is not None:
            login_user(user)
            return redirect(_safe_next(request.args.get("next")))
        form.password.errors.append("Wrong email or password.")
    status = 200 if not form.errors else 400
    return render_template("auth/login.html", form=form), status


@bp.route("/register", methods=["GET", "POST"])
@limit_attempts
def register():
    form = RegisterForm()
    if form.validate_on_submit():
        try:
            user = create_user(form.email.data, form.password.data)
        except AccountError as error:
            form.email.errors.append(str(error).capitalize() + ".")
        else:
            login_user(user)
            return redirect(url_for("pages.index"))
    status = 200 if not form.errors else 400
    return render_template("auth/register.html", form=form), status


@bp.post("/logout")
def logout():
    if LogoutForm().validate_on_submit():
        if current_user.is_authenticated:
            # Everywhere, not only in this browser: a copy of the cookie, a
            # token or a socket the user forgot would outlive the logout.
            user = current_user._get_current_object()
            user.revoke_credentials()
            db.session.commit()
            close_revoked_sockets(user.id, user.credential_version)
        logout_user()
        flash("You are logged out.")
    return redirect(url_for("auth.login"))


@bp.route("/password", methods=["GET", "POST"])
@login_required
@limit_attempts
def password():
    form = ChangePasswordForm()
    if form.validate_on_submit():
        user = current_user._get_current_object()
        if not user.check_password(form.current_password.data):
            form.current_password.errors.append("Wrong password.")
        else:
            try:
                change_password(user, form.password.data)
            except AccountError as error:
                form.password.errors.append(str(error).capitalize() + ".")
            else:
                # This browser carries on under the new version; every other
                # session, token and socket of the user is void.
                login_user(user)
                close_revoked_sockets(user.id, user.credential_version)
                flash("Your password is changed; you are logged out everywhere else.")
                return redirect(url_for("pages.index"))
    status = 200 if not form.errors else 400
    return render_template("auth/password.html", form=form), status


@bp.post("/token")
@csrf.exempt  # HTTP Basic credentials are not sent by browsers on their own.
@limit_attempts
def token():
    credentials = request.authorization
    user = None
    if credentials is not None and credentials.type == "basic":
        user = User.authenticate(credentials.username or "", credentials.password or "")
    if user is None:
        return jsonify(error="invalid email or password"), 401
    max_age = current_app.config["TOKEN_MAX_AGE"]
    token = issue_token(user.id, user.credential_version)
    return jsonify(token=token, expires_in=max_age)
