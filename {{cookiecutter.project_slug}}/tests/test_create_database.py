"""`flask create-database`, which `make dev` runs before `db upgrade`: it
creates the database DATABASE_URL names when it is missing, leaves one that
exists alone, and stops with one line when it cannot."""

import secrets
from contextlib import closing

import psycopg
import pytest
from sqlalchemy.engine import make_url

from .conftest import free_port, run_flask


@pytest.fixture
def server_admin(database_url):
    """A connection to the test server, as the user that made the test database."""
    with closing(psycopg.connect(database_url, autocommit=True)) as connection:
        yield connection


@pytest.fixture
def missing_database(database_url, server_admin):
    """The URL of a database that does not exist yet; dropped at the end."""
    name = f"test_create_{secrets.token_hex(4)}"
    yield make_url(database_url).set(database=name)
    server_admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def database_exists(connection, name: str) -> bool:
    found = connection.execute(
        "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
    ).fetchone()
    return found is not None


def create_database(settings: dict, url) -> tuple[int, str, str]:
    result = run_flask(
        {**settings, "DATABASE_URL": url.render_as_string(hide_password=False)},
        "create-database",
    )
    return result.returncode, result.stdout, result.stderr


def test_creates_the_missing_database_then_leaves_it_alone(
    settings, missing_database, server_admin
):
    name = missing_database.database
    server = f"{missing_database.host}:{missing_database.port or 5432}"

    assert create_database(settings, missing_database) == (
        0,
        f'created database "{name}" on {server}\n',
        "",
    )
    assert database_exists(server_admin, name)
    assert create_database(settings, missing_database) == (
        0,
        f'database "{name}" exists on {server}\n',
        "",
    )


def test_an_unreachable_server_is_one_line(settings, missing_database):
    port = free_port()  # nothing listens there
    unreachable = missing_database.set(host="127.0.0.1", port=port)

    assert create_database(settings, unreachable) == (
        1,
        "",
        f"error: cannot reach PostgreSQL at 127.0.0.1:{port}: Connection refused; "
        "start it or set DATABASE_URL in .env\n",
    )


def test_a_user_who_may_not_create_databases_is_told_the_command(
    settings, missing_database, server_admin
):
    role = f"test_nocreate_{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(12)
    server_admin.execute(f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}'")
    try:
        as_role = missing_database.set(username=role, password=password)
        host, port = missing_database.host, missing_database.port or 5432

        assert create_database(settings, as_role) == (
            1,
            "",
            f'error: PostgreSQL user "{role}" may not create databases on '
            f"{host}:{port}; create it as one who may: "
            f"createdb -h {host} -p {port} -O {role} {missing_database.database}\n",
        )
        assert not database_exists(server_admin, missing_database.database)
    finally:
        server_admin.execute(f'DROP ROLE "{role}"')
