"""`flask --app {{ cookiecutter.package_name }} users create EMAIL [--password PW]`
and `users set-password EMAIL [--password PW]`."""

import click
from flask.cli import AppGroup

from ..realtime.revocations import close_revoked_sockets
from .models import AccountError, User, change_password, create_user

users = AppGroup("users", help="Manage user accounts.")


@users.command("create")
@click.argument("email")
@click.password_option(help="The password; prompted for when not given.")
def create(email: str, password: str) -> None:
    """Add a user who can log in and open WebSockets."""
    try:
        user = create_user(email, password)
    except AccountError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"created user {user.email}")


@users.command("set-password")
@click.argument("email")
@click.password_option(help="The new password; prompted for when not given.")
def set_password(email: str, password: str) -> None:
    """Change a user's password; their sessions, tokens and sockets end."""
    user = User.by_email(email)
    if user is None:
        raise click.ClickException(f"no user has the email {email.strip().lower()}")
    try:
        change_password(user, password)
    except AccountError as error:
        raise click.ClickException(str(error)) from None
    close_revoked_sockets(user.id, user.credential_version)
    click.echo(f"changed the password of {user.email}; logged out everywhere")
