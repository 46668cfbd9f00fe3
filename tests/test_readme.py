"""Every command a generated project's README.md and docs/ show runs here, so
the manual cannot drift from the code.

Their fenced blocks are read in order: the README first, then each docs file
by name. Each shell command must match commands(), which runs it on a real
bake with its locked venv, as a reader with that venv activated would,
against a gunicorn started as the README starts it; or NOT_RUN_HERE, which
says why it cannot run here and what proves it instead. Each Python block must match
PYTHON_BLOCKS, and each YAML block (a Prometheus scrape configuration)
YAML_BLOCKS. Anything else fails: teach this file to run it, or say why it
cannot.

The fast test reads the docs of every choice, with nothing to install. The
slow one runs them on one bake: PostgreSQL, so that `create-database` runs
too, with a package name no database has yet.
"""

import json
import re
import shlex
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import EACH_CHOICE_ALONE, free_port, require, run
from test_make_dev import (
    Bake,
    database_exists,
    dev_environ,
    get,
    make_bake,
    query_postgres,
)

FENCED_BLOCK = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
MARKDOWN_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)\s]*)?\)")
# A link to a file of the bake or a heading, with its fragment: not a URL.
RELATIVE_LINK = re.compile(r"\]\((?![a-z]+:)([^)\s]+)\)")

# Where the examples expect the server; the test's server is on a free port.
README_ADDRESS = "127.0.0.1:8000"
PASSWORD = "readme walkthrough password"  # noqa: S105 (a throwaway account's)
SERVE_DEADLINE = 60
STOP_DEADLINE = 40

# The slow test's bake.
WALKTHROUGH_ANSWERS = {"database": "postgresql"}

# Fenced blocks in these languages hold no commands.
NOT_COMMANDS = {
    "": "layout and formulas, not commands",
    "js": (
        "runs in a browser page; the generated tests/test_browser.py drives the "
        "demo page, which opens its sockets the same way"
    ),
}

# Commands that cannot run here, by their first words: why, and what proves
# them instead.
NOT_RUN_HERE = {
    ("python3", "-m", "venv", ".venv"): (
        "makes the venv that locked_venv makes here, as `make install` does"
    ),
    (".", ".venv/bin/activate"): (
        "enters the venv; every command here runs with its bin/ first on PATH"
    ),
    ("docker", "compose"): (
        "needs a Docker engine; tests/test_deploy_files.py reads compose.yaml "
        "with docker-compose, and the generated tests/test_nginx.py runs its "
        "nginx config"
    ),
    ("cruft",): (
        "needs the template's git repository; tests/test_updates.py runs "
        "cruft create, update and check on a git copy of the template"
    ),
    ("cookiecutter",): (
        "tests/test_updates.py regenerates a project from its .cookiecutter.json"
    ),
    ("diff",): "compares with a project that cookiecutter regenerated",
    ("certbot",): "needs a public domain name and Let's Encrypt",
    ("uv", "pip", "compile"): (
        "needs the package index; tests/test_locks.py checks that each shipped "
        "lock was compiled by these very commands"
    ),
}


@dataclass
class Walkthrough:
    """What the commands have set up so far, for the ones after them."""

    bake: Bake
    log_dir: Path
    users: dict[str, str] = field(default_factory=dict)
    # Programs a step needed and this machine lacks: the other steps still run.
    missing: list[str] = field(default_factory=list)
    server: subprocess.Popen | None = None
    server_url: str = ""

    def environ(self, **settings: str) -> dict:
        """The reader's shell: the venv activated, the app's settings from .env."""
        venv = self.bake.path / ".venv"
        environ = dev_environ(self.bake, **settings)
        environ.pop("PYTHONHOME", None)
        environ["VIRTUAL_ENV"] = str(venv)
        environ["PATH"] = f"{venv / 'bin'}:{environ.get('PATH', '')}"
        return environ

    def stop(self) -> None:
        if self.server and self.server.poll() is None:
            self.server.send_signal(signal.SIGTERM)
            try:
                self.server.wait(timeout=STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()


def executable(words: list[str], walk: Walkthrough) -> list[str]:
    """The command with its program looked up as the activated venv would."""
    found = shutil.which(words[0], path=walk.environ()["PATH"])
    assert found, f"{words[0]} is not installed"
    return [found, *words[1:]]


def run_as_written(
    words: list[str], walk: Walkthrough, **kwargs
) -> subprocess.CompletedProcess:
    """Run in the project's folder; fail with the output when it fails."""
    env = kwargs.pop("env", None) or walk.environ()
    finished = subprocess.run(
        executable(words, walk),
        cwd=walk.bake.path,
        env=env,
        capture_output=True,
        text=True,
        timeout=kwargs.pop("timeout", 120),
        **kwargs,
    )
    output = finished.stdout + finished.stderr
    assert finished.returncode == 0, f"{shlex.join(words)} failed:\n{output}"
    return finished


# Run in the project's venv: the project is installed in editable mode from
# the project's folder, and every requirement of its dev extra is installed.
INSTALLED_WITH_DEV_EXTRA = """
import json, re, sys
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlparse

distribution = metadata.distribution(sys.argv[1])
direct_url = json.loads(distribution.read_text("direct_url.json") or "{}")
assert direct_url.get("dir_info", {}).get("editable"), "not an editable install"
location = Path(unquote(urlparse(direct_url["url"]).path))
assert location.resolve() == Path.cwd().resolve(), location
for requirement in distribution.requires or []:
    if 'extra == "dev"' in requirement:
        metadata.version(re.match(r"[A-Za-z0-9._-]+", requirement).group(0))
"""


def check_installed_here(words: list[str], walk: Walkthrough) -> None:
    """`pip install -e ".[dev]"` made the venv every command here runs in.

    The venv comes from the locks (uv's venvs have no pip, and pip would take
    the newest releases from the index); check that it holds what the command
    installs: the project, editable from its folder, with its dev extra.
    """
    slug = walk.bake.path.name
    run_as_written(["python", "-c", INSTALLED_WITH_DEV_EXTRA, slug], walk)


def run_with_dotenv(words: list[str], walk: Walkthrough) -> None:
    run_as_written(words, walk)


def create_user(words: list[str], walk: Walkthrough) -> None:
    """Answer the password prompt on stdin, as a person would type it."""
    email = words[words.index("create") + 1]
    answers = "" if "--password" in words else f"{PASSWORD}\n{PASSWORD}\n"
    # A session of its own: without a controlling terminal, the prompt reads
    # stdin instead of the terminal this test may run in.
    created = run_as_written(words, walk, input=answers, start_new_session=True)
    assert f"created user {email}" in created.stdout
    walk.users[email] = PASSWORD


def serve(words: list[str], walk: Walkthrough) -> None:
    """Start gunicorn as shown, on a free PORT; stopped when the test ends."""
    assert walk.server is None, "the docs start the server twice"
    port = free_port()
    log_path = walk.log_dir / "gunicorn.log"
    with log_path.open("w") as log:
        walk.server = subprocess.Popen(
            executable(words, walk),
            cwd=walk.bake.path,
            env=walk.environ(PORT=str(port)),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    walk.server_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + SERVE_DEADLINE
    while time.monotonic() < deadline:
        assert walk.server.poll() is None, f"gunicorn exited:\n{log_path.read_text()}"
        try:
            if get(f"{walk.server_url}/healthz") == 200:
                return
        except OSError:  # still booting
            pass
        time.sleep(0.1)
    pytest.fail(
        f"gunicorn did not answer in {SERVE_DEADLINE} s:\n{log_path.read_text()}"
    )


def dry_run_make(words: list[str], walk: Walkthrough) -> None:
    """`make -n`: the target exists and its recipe expands, nothing runs
    (tests/test_make_dev.py runs `make dev` itself)."""
    run_as_written(["make", "-n", *words[1:]], walk)


def make_certificate(words: list[str], walk: Walkthrough) -> None:
    """The self-signed pair for trying the stack: written where nginx reads it."""
    if shutil.which("openssl") is None:
        walk.missing.append(f"openssl is not installed: `{shlex.join(words)}`")
        return
    run_as_written(words, walk)
    certs = walk.bake.path / "deploy" / "nginx" / "certs"
    names = run(
        ["openssl", "x509", "-noout", "-ext", "subjectAltName"]
        + ["-in", str(certs / "fullchain.pem")],
        cwd=certs,
    )
    assert "DNS:localhost" in names.stdout, names.stdout
    assert (certs / "privkey.pem").stat().st_size > 0


def run_loadtest(words: list[str], walk: Walkthrough) -> None:
    """The load tool against the running server, with a few sockets held for a
    moment; the password a user would type comes from LOADTEST_PASSWORD."""
    assert walk.server, "the docs show the load tool before they show how to serve"
    address = walk.server_url.removeprefix("http://")
    words = [word.replace(README_ADDRESS, address) for word in words]
    for option, small in (("-n", "5"), ("--hold", "1")):
        if option in words:
            words[words.index(option) + 1] = small
    # The README's server writes its pid to gunicorn.pid; this one is ours.
    pid_file = "$(cat gunicorn.pid)"
    assert pid_file in words, "the load tool no longer names the server by its pid"
    words[words.index(pid_file)] = str(walk.server.pid)
    email = words[words.index("--user") + 1]
    assert email in walk.users, f"the docs never create the user {email}"
    run_as_written(words, walk, env=walk.environ(LOADTEST_PASSWORD=walk.users[email]))


def commands(package: str) -> dict[tuple[str, ...], Callable]:
    """{first words: how to run a command that starts with them}."""
    flask = ("flask", "--app", package)
    return {
        ("python", "-m", "pip", "install", "-e", ".[dev]"): check_installed_here,
        (*flask, "create-database"): run_with_dotenv,
        (*flask, "db", "upgrade"): run_with_dotenv,
        (*flask, "users", "create"): create_user,
        ("gunicorn", "-c", "gunicorn.conf.py"): serve,
        ("make",): dry_run_make,
        ("ruff", "check"): run_with_dotenv,
        ("ruff", "format", "--check"): run_with_dotenv,
        ("openssl", "req", "-x509"): make_certificate,
        ("python", "scripts/loadtest.py"): run_loadtest,
    }


def run_client(code: str, walk: Walkthrough) -> None:
    """The client snippet, pointed at the test server, as a user it created."""
    assert walk.server, "the docs show a client before they show how to serve"
    assert README_ADDRESS in code, f"the client no longer targets {README_ADDRESS}"
    credentials = re.search(r'credentials = \("([^"]+)", "([^"]+)"\)', code)
    assert credentials, "the client no longer sets credentials = (email, password)"
    email, password = credentials.groups()
    assert email in walk.users, f"the docs never create the user {email}"
    code = code.replace(README_ADDRESS, walk.server_url.removeprefix("http://"))
    code = code.replace(f'"{password}"', json.dumps(walk.users[email]))

    finished = subprocess.run(
        executable(["python"], walk) + ["-c", code],
        cwd=walk.log_dir,
        env=walk.environ(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert finished.returncode == 0, finished.stdout + finished.stderr
    message = json.loads(finished.stdout.strip().splitlines()[-1])
    assert message["type"] == "message"
    assert message["user"] == email
    assert message["text"] == "hello"


PYTHON_BLOCKS: dict[str, Callable] = {
    # Recognised by what it imports.
    "websockets.sync.client": run_client,
}


def check_scrape_config(text: str, walk: Walkthrough) -> None:
    """Prometheus's scrape configuration: promtool accepts it, and its target,
    pointed at the test server, answers /metrics."""
    assert walk.server, "the docs show a scrape before they show how to serve"
    assert f'"{README_ADDRESS}"' in text, (
        f"the scrape no longer targets {README_ADDRESS}"
    )
    address = walk.server_url.removeprefix("http://")
    config = walk.log_dir / "prometheus.yml"
    config.write_text(text.replace(README_ADDRESS, address))
    promtool = shutil.which("promtool")
    if promtool is None:
        walk.missing.append("promtool is not installed: the scrape configuration")
    else:
        checked = run([promtool, "check", "config", str(config)], cwd=walk.log_dir)
        assert checked.returncode == 0, checked.stdout
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        assert response.status == 200
        assert b"websocket_connections" in response.read()


YAML_BLOCKS: dict[str, Callable] = {
    # Recognised by its first key.
    "scrape_configs:": check_scrape_config,
}


def manual(project: Path) -> list[Path]:
    """README.md, then every file of docs/ by name: the order they run in."""
    return [project / "README.md", *sorted((project / "docs").glob("*.md"))]


def shell_commands(text: str) -> list[list[str]]:
    """The commands of a shell block as word lists, comments left out."""
    found = []
    for line in text.replace("\\\n", " ").splitlines():
        if words := shlex.split(line, comments=True):
            found.append(words)
    return found


def matching(words: list[str], table: dict) -> tuple | None:
    for prefix in table:
        if tuple(words[: len(prefix)]) == prefix:
            return prefix
    return None


def steps(
    project: Path, package: str
) -> list[tuple[str, Callable | str | None, object]]:
    """What to do for each command and block, in order: (what, action, argument).

    An action of None means not run here, its argument the reason; "unknown"
    means this file does not know it.
    """
    known = commands(package)
    plan = []
    for path in manual(project):
        where = path.relative_to(project)
        for language, text in FENCED_BLOCK.findall(path.read_text()):
            if language in NOT_COMMANDS:
                plan.append((f"{where}: ```{language}", None, NOT_COMMANDS[language]))
            elif language == "sh":
                for words in shell_commands(text):
                    what = f"{where}: {shlex.join(words)}"
                    if prefix := matching(words, known):
                        plan.append((what, known[prefix], words))
                    elif prefix := matching(words, NOT_RUN_HERE):
                        plan.append((what, None, NOT_RUN_HERE[prefix]))
                    else:
                        plan.append((what, "unknown", None))
            elif language in ("python", "yaml"):
                blocks = PYTHON_BLOCKS if language == "python" else YAML_BLOCKS
                marks = [mark for mark in blocks if mark in text]
                action = blocks[marks[0]] if marks else "unknown"
                plan.append((f"{where}: {text.splitlines()[0]}", action, text))
            else:
                plan.append((f"{where}: ```{language}", "unknown", None))
    return plan


@pytest.mark.parametrize("answers", EACH_CHOICE_ALONE)
def test_every_command_in_the_readme_and_docs_is_known(baked, answers):
    result = baked(**answers)
    plan = steps(result.project_path, result.context["package_name"])
    unknown = [what for what, action, _ in plan if action == "unknown"]
    assert not unknown, (
        "the generated docs show what tests/test_readme.py cannot run or "
        "explain; add it to commands(), PYTHON_BLOCKS or NOT_RUN_HERE:\n  "
        + "\n  ".join(unknown)
    )
    ran = [what for what, action, _ in plan if callable(action)]
    assert any("gunicorn -c gunicorn.conf.py" in what for what in ran), (
        "the README no longer shows how to serve"
    )


@pytest.mark.parametrize("answers", EACH_CHOICE_ALONE)
def test_the_readme_links_every_docs_file(baked, answers):
    project = baked(**answers).project_path
    linked = set(MARKDOWN_LINK.findall((project / "README.md").read_text()))
    docs = {path.relative_to(project).as_posix() for path in manual(project)[1:]}
    assert docs, "the bake has no docs/"
    assert sorted(docs - linked) == []


def anchors(markdown: str) -> set[str]:
    """The fragment each heading gets on GitHub: lowercase, punctuation other
    than hyphens dropped, spaces made hyphens."""
    found = set()
    for heading in re.findall(r"^#+ (.+)$", FENCED_BLOCK.sub("", markdown), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(slug)
    return found


@pytest.mark.parametrize("answers", EACH_CHOICE_ALONE)
def test_every_relative_link_of_the_readme_and_docs_resolves(baked, answers):
    project = baked(**answers).project_path
    broken = []
    for path in manual(project):
        for target in RELATIVE_LINK.findall(path.read_text()):
            file, _, fragment = target.partition("#")
            linked = (path.parent / file).resolve() if file else path
            where = f"{path.relative_to(project)}: ({target})"
            if not linked.exists():
                broken.append(f"{where} names no file of the bake")
            elif fragment and fragment not in anchors(linked.read_text()):
                broken.append(f"{where} names no heading of {linked.name}")
    assert not broken, "\n".join(broken)


@pytest.fixture(scope="module")
def walkthrough_bake(cookies_session):
    bake = make_bake(cookies_session, WALKTHROUGH_ANSWERS)
    yield bake
    if database_exists(bake):
        query_postgres(bake, f'DROP DATABASE "{bake.package}" WITH (FORCE)')


@pytest.mark.slow
def test_readme_and_docs_commands_run_in_order(walkthrough_bake, tmp_path):
    bake = walkthrough_bake
    assert not database_exists(bake), "the walkthrough's database exists already"
    walk = Walkthrough(bake=bake, log_dir=tmp_path)
    try:
        for what, action, argument in steps(bake.path, bake.package):
            if callable(action):
                action(argument, walk)
            elif action == "unknown":
                pytest.fail(f"the docs show what this test does not know: {what}")
        assert walk.server, "the README never shows how to serve"
        # `create-database` made the database that .env names.
        assert database_exists(bake)
    finally:
        walk.stop()
    require(not walk.missing, "; ".join(walk.missing))
