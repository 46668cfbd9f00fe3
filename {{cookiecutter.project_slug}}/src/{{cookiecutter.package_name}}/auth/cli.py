"""`flask --app {{ cookiecutter.package_name }} users create EMAIL [--password PW]`"""

import click
from flask.cli import AppGroup

from .models import AccountError, create_user

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
