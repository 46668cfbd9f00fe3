from urllib.parse import urlsplit

from flask import (
    current_app,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_login import login_user, logout_user

from ..extensions import csrf
from . import bp
from .forms import LoginForm, LogoutForm, RegisterForm
from .models import AccountError, User, create_user
from .tokens import issue_token


def _safe_next(target: str | None) -> str:
    """Only redirect to a path of this site, never to another host."""
    if target and target.startswith("/") and "\\" not in target:
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc:
            return target
    return url_for("pages.index")


@bp.app_context_processor
def inject_logout_form() -> dict:
    """Every page with the header's logout button needs its CSRF token."""
    return {"logout_form": LogoutForm()}


@bp.route("/login", methods=["GET", "POST"])
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
        logout_user()
        flash("You are logged out.")
    return redirect(url_for("auth.login"))


@bp.post("/token")
@csrf.exempt  # HTTP Basic credentials are not sent by browsers on their own.
def token():
    credentials = request.authorization
    user = None
    if credentials is not None and credentials.type == "basic":
        user = User.authenticate(credentials.username or "", credentials.password or "")
    if user is None:
        return jsonify(error="invalid email or password"), 401
    max_age = current_app.config["TOKEN_MAX_AGE"]
    return jsonify(token=issue_token(user.id), expires_in=max_age)
