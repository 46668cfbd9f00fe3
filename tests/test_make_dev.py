"""`make dev` as a person runs it right after generating: it serves on the
first run (PostgreSQL: creating the database), and Ctrl-C stops it at once.

Each bake gets one venv (module scope), made with uv as in
test_generated_suite.py; make's install target then has nothing to do, so
what runs is the rest of `make dev` itself, in its own process group as a
terminal runs it.
"""

import base64
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import CHOICES, TEMPLATE_DIR, free_port, require, run
from test_generated_suite import locked_venv, reachable, run_step
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
# Generous: make dev migrates and boots gunicorn, on a machine running other
# test suites too.
START_DEADLINE = 120
STOP_DEADLINE = 60
# What Ctrl-C may take, measured from SIGINT to make's exit.
STOP_WITHIN = 3.0
PASSWORD = "make dev password"  # noqa: S105 (a throwaway account's)

# The gthread case with a PostgreSQL database that does not exist
# yet, and the other worker class with the default database.
BAKES = {
    "gthread-postgresql": {"worker_class": "gthread", "database": "postgresql"},
    "gevent-sqlite": {"worker_class": "gevent", "database": "sqlite"},
}


@dataclass
class Bake:
    path: Path
    package: str
    answers: dict

    @property
    def postgresql(self) -> bool:
        return self.answers["database"] == "postgresql"

    @property
    def python(self) -> str:
        return str(self.path / ".venv" / "bin" / "python")


def query_postgres(bake: Bake, statement: str, *parameters: str) -> str:
    """Run one statement as the server's postgres user, with the bake's own
    psycopg; returns the first column of the first row, or ''."""
    script = (
        "import sys, psycopg\n"
        "with psycopg.connect(sys.argv[1], autocommit=True) as connection:\n"
        "    cursor = connection.execute(sys.argv[2], sys.argv[3:] or None)\n"
        "    row = cursor.fetchone() if cursor.description else None\n"
        "print(row[0] if row else '')\n"
    )
    command = [bake.python, "-c", script, POSTGRES_ADMIN_URL, statement, *parameters]
    return run_step(command, cwd=bake.path, timeout=60).stdout.strip()


def database_exists(bake: Bake) -> bool:
    found = query_postgres(
        bake, "SELECT 1 FROM pg_database WHERE datname = %s", bake.package
    )
    return found == "1"


def make_bake(cookies_session, answers: dict) -> Bake:
    if answers["database"] == "postgresql":
        reason = "PostgreSQL is not reachable at 127.0.0.1:5432"
        require(reachable("127.0.0.1", 5432), reason)
    require(shutil.which("make") is not None, "make is not installed")
    uv = shutil.which("uv")
    require(uv is not None, "uv is not installed")

    # A fresh package name: .env names a PostgreSQL database after it, which
    # does not exist yet.
    slug = f"make-dev-{secrets.token_hex(4)}"
    result = cookies_session.bake(
        extra_context={"project_slug": slug, **answers}, template=str(TEMPLATE_DIR)
    )
    assert result.exception is None, f"bake {answers} failed: {result.exception!r}"
    project = result.project_path
    locked_venv(uv, project)
    # The venv is newer than pyproject.toml and the lock: make installs nothing.
    up_to_date = run(["make", "-q", ".venv/bin/gunicorn"], cwd=project)
    assert up_to_date.returncode == 0, "make would reinstall:\n" + up_to_date.stdout
    return Bake(project, result.context["package_name"], answers)


@pytest.fixture(scope="module")
def dev_bake(cookies_session):
    """dev_bake(name): the bake of BAKES[name] with its venv, made once."""
    made: dict[str, Bake] = {}

    def bake(name: str) -> Bake:
        if name not in made:
            made[name] = make_bake(cookies_session, BAKES[name])
        return made[name]

    yield bake
    for each in made.values():
        if each.postgresql:
            drop = f'DROP DATABASE IF EXISTS "{each.package}" WITH (FORCE)'
            query_postgres(each, drop)


def dev_environ(bake: Bake, **settings: str) -> dict:
    """This environment without the app's settings (so .env decides), plus these."""
    example = (bake.path / ".env.example").read_text()
    names = set(re.findall(r"^([A-Z][A-Z0-9_]*)=", example, re.M))
    environ = {k: v for k, v in os.environ.items() if k not in names}
    return {**environ, **settings}


@dataclass
class MakeDev:
    process: subprocess.Popen
    log_path: Path
    url: str
    port: int

    def log(self) -> str:
        return self.log_path.read_text()


@pytest.fixture(autouse=True)
def ctrl_c_as_in_a_terminal():
    """A script's `command &` (a shell without job control) starts the command
    with SIGINT ignored, and every process it starts inherits that: `make dev`
    would then outlive its Ctrl-C. In a terminal make has the default action;
    while this pytest catches SIGINT, the processes it starts get the default
    back."""
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextmanager
def make_dev(bake: Bake, log_path: Path, **settings: str):
    """`make dev` in a process group of its own, as a terminal runs it."""
    port = free_port()
    with log_path.open("w") as log:
        process = subprocess.Popen(
            ["make", "dev"],
            cwd=bake.path,
            env=dev_environ(bake, PORT=str(port), **settings),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield MakeDev(process, log_path, f"http://127.0.0.1:{port}", port)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def wait_until_ready(dev: MakeDev) -> None:
    """Until /readyz answers 200 (database reachable and migrated)."""
    deadline = time.monotonic() + START_DEADLINE
    while time.monotonic() < deadline:
        if dev.process.poll() is not None:
            pytest.fail(f"make dev exited {dev.process.returncode}:\n{dev.log()}")
        try:
            if get(f"{dev.url}/readyz") == 200:
                return
        except OSError:  # not listening yet
            pass
        time.sleep(0.1)
    pytest.fail(f"/readyz did not answer 200 in {START_DEADLINE} s:\n{dev.log()}")


def bearer_token(bake: Bake, dev: MakeDev) -> str:
    email = f"dev-{secrets.token_hex(4)}@example.com"
    created = run(
        [str(bake.path / ".venv" / "bin" / "flask"), "--app", bake.package]
        + ["users", "create", email, "--password", PASSWORD],
        cwd=bake.path,
        env=dev_environ(bake),
        timeout=120,
    )
    assert created.returncode == 0, created.stdout
    basic = base64.b64encode(f"{email}:{PASSWORD}".encode()).decode()
    request = urllib.request.Request(
        f"{dev.url}/auth/token",
        method="POST",
        headers={"Authorization": f"Basic {basic}"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)["token"]


def close_code(client) -> int | None:
    """The code of the server's close frame, None when there was none."""
    with pytest.raises(ConnectionClosed) as closed:
        client.recv(timeout=10)
    return closed.value.rcvd.code if closed.value.rcvd else None


def group_is_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize("database", CHOICES["database"])
def test_only_postgresql_bakes_create_their_database(baked, database):
    result = baked(database=database)
    project, package = result.project_path, result.context["package_name"]
    creates = database == "postgresql"
    assert ("create-database" in (project / "Makefile").read_text()) is creates
    assert (project / "src" / package / "database.py").exists() is creates
    assert (project / "tests" / "test_create_database.py").exists() is creates


# In this order: the first test of a bake finds its database still missing.
@pytest.mark.slow
@pytest.mark.parametrize("name", list(BAKES))
def test_first_make_dev_serves_and_is_ready(dev_bake, name, tmp_path):
    bake = dev_bake(name)
    if bake.postgresql:
        assert not database_exists(bake)
    with make_dev(bake, tmp_path / "make-dev.log") as dev:
        wait_until_ready(dev)
    lines = dev.log().splitlines()
    if bake.postgresql:
        assert f'created database "{bake.package}" on 127.0.0.1:5432' in lines
        assert database_exists(bake)
    assert not [line for line in lines if "Traceback" in line], dev.log()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BAKES))
def test_ctrl_c_stops_make_dev_at_once_closing_sockets_with_1001(
    dev_bake, name, tmp_path
):
    bake = dev_bake(name)
    with make_dev(bake, tmp_path / "make-dev.log") as dev, ExitStack() as sockets:
        wait_until_ready(dev)
        token = bearer_token(bake, dev)
        # What the demo page holds open: the bug needed an open socket.
        clients = [
            sockets.enter_context(
                connect(
                    f"ws://127.0.0.1:{dev.port}{path}",
                    additional_headers={"Authorization": f"Bearer {token}"},
                    open_timeout=30,
                )
            )
            for path in ("/ws/echo", "/ws/chat")
        ]
        clients[0].send("before Ctrl-C")
        assert clients[0].recv(timeout=30) == "before Ctrl-C"

        # A terminal's Ctrl-C: SIGINT to make, the gunicorn master and workers.
        interrupted = time.monotonic()
        os.killpg(dev.process.pid, signal.SIGINT)
        try:
            exit_code = dev.process.wait(timeout=STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            pytest.fail(f"make dev still running {STOP_DEADLINE} s after Ctrl-C")
        took = time.monotonic() - interrupted

        close_codes = [close_code(client) for client in clients]

    print(f"{name}: Ctrl-C to exit took {took:.2f} s")
    log = dev.log()
    assert took < STOP_WITHIN, f"Ctrl-C took {took:.2f} s:\n{log}"
    assert "SIGKILL" not in log, log
    assert "Traceback" not in log, log
    assert "Shutting down: Master" in log, log
    assert exit_code == -signal.SIGINT, log
    assert group_is_gone(dev.process.pid), "processes of make dev outlived it"
    assert close_codes == [1001, 1001]  # None: dropped without a close frame


@pytest.mark.slow
def test_make_dev_with_postgresql_unreachable_stops_with_one_line(dev_bake, tmp_path):
    bake = dev_bake("gthread-postgresql")
    port = free_port()  # nothing listens there
    url = f"postgresql://postgres@127.0.0.1:{port}/{bake.package}"
    with make_dev(bake, tmp_path / "make-dev.log", DATABASE_URL=url) as dev:
        exit_code = dev.process.wait(timeout=STOP_DEADLINE)
    lines = dev.log().splitlines()
    assert exit_code == 2, dev.log()  # make's code for a failed recipe
    assert (
        f"error: cannot reach PostgreSQL at 127.0.0.1:{port}: Connection refused; "
        "start it or set DATABASE_URL in .env"
    ) in lines
    assert not [line for line in lines if "Traceback" in line], dev.log()
    # It stopped at its first step.
    assert f".venv/bin/flask --app {bake.package} db upgrade" not in lines
