"""Bake a project, install it into its own venv, and run its own test suite.

This is what a user does right after generating: ``pip install -e ".[dev]"``
then ``pytest``. All venvs share uv's one wheel cache (uv's default), so only
the first install downloads anything.

Each bake has a project name of its own (realtime-gthread-sqlite-memory...),
so the suites also prove names other than the default.

The four suites run two at a time (SUITES_AT_ONCE), in the background from
the first of their tests on: a suite keeps less than one core busy on average
(it waits for servers, sockets and timers), so two share a two-core machine
well and the four take about the time of two and a half. Every generated test
that depends on timing waits for a condition with a generous deadline, so
the suites hold when they share the machine.
"""

import os
import shutil
import socket
import subprocess
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
from conftest import bake_with, require, run

VENV_PYTHON = "3.11"
INSTALL_TIMEOUT = 600
# Two suites at once take longer each than one alone.
SUITE_TIMEOUT = 1200
OUTPUT_TAIL = 6000
SUITES_AT_ONCE = 2

# Each worker class meets each database and each broadcast once: four runs
# instead of eight, and every implemented answer runs its suite.
PAIRWISE_COMBINATIONS = [
    pytest.param({}, id="gthread-sqlite-memory"),
    pytest.param(
        {"worker_class": "gevent", "database": "postgresql"},
        id="gevent-postgresql-memory",
    ),
    pytest.param(
        {"database": "postgresql", "broadcast": "redis"},
        id="gthread-postgresql-redis",
    ),
    pytest.param(
        {"worker_class": "gevent", "broadcast": "redis"}, id="gevent-sqlite-redis"
    ),
]

# What a variant needs running on this machine: the servers CI starts (.ci/run).
SERVICES = {
    ("database", "postgresql"): ("PostgreSQL", "127.0.0.1", 5432),
    ("broadcast", "redis"): ("Redis", "127.0.0.1", 6379),
}


def reachable(host, port):
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def tail(text):
    return text if len(text) <= OUTPUT_TAIL else "...\n" + text[-OUTPUT_TAIL:]


def run_step(command, cwd, timeout, env=None):
    """Run one setup or test step; fail the test with its output's tail."""
    try:
        finished = run(command, cwd=cwd, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as expired:
        output = expired.output or ""
        if isinstance(output, bytes):
            output = output.decode(errors="replace")
        pytest.fail(f"{' '.join(command)} timed out after {timeout}s:\n{tail(output)}")
    # Compare a plain int, so pytest does not repeat the whole output in its repr.
    code = finished.returncode
    assert code == 0, f"{' '.join(command)} exited {code}:\n{tail(finished.stdout)}"
    return finished


def locked_venv(uv: str, project):
    """`project`/.venv, installed as the project's CI and `make install` do:
    the exact versions of its lock, checked against their hashes, then the
    project alone. Compiled now, once: with PYTHONDONTWRITEBYTECODE set (as
    on CI machines) every gunicorn and flask a suite starts would otherwise
    compile its imports anew, about 3 s each."""
    venv = project / ".venv"
    run_step(
        [uv, "venv", "--no-python-downloads", "--python", VENV_PYTHON, str(venv)],
        cwd=project,
        timeout=INSTALL_TIMEOUT,
    )
    install = [uv, "pip", "install", "--compile-bytecode"]
    install += ["--python", str(venv / "bin" / "python")]
    run_step(
        [*install, "--require-hashes", "-r", "requirements-dev.lock"],
        cwd=project,
        timeout=INSTALL_TIMEOUT,
    )
    run_step([*install, "--no-deps", "-e", "."], cwd=project, timeout=INSTALL_TIMEOUT)
    # An editable install leaves the project's own modules uncompiled: about
    # 0.2 s in every one of the suite's ~150 gunicorn workers and commands.
    python = str(venv / "bin" / "python")
    run_step([python, "-m", "compileall", "-q", "src"], cwd=project, timeout=60)
    return venv


def missing_for(answers) -> list[str]:
    """What the suite of a bake with these answers needs and this machine lacks."""
    missing = []
    for (question, answer), (name, host, port) in SERVICES.items():
        if answers.get(question) == answer and not reachable(host, port):
            missing.append(f"{name} is not reachable at {host}:{port}")
    if shutil.which("uv") is None:
        missing.append("uv is not installed")
    return missing


def run_generated_suite(project) -> None:
    """Install the bake at `project` and run its suite; fails with its output."""
    venv = locked_venv(shutil.which("uv"), project)
    # The current environment (REQUIRE_ALL included), as if the venv were
    # activated, so the suite's own subprocesses find its gunicorn and python.
    env = dict(os.environ)
    env.pop("PYTHONHOME", None)
    env["VIRTUAL_ENV"] = str(venv)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    run_step(
        [str(venv / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=project,
        timeout=SUITE_TIMEOUT,
        env=env,
    )


@pytest.fixture(scope="module")
def generated_suites(cookies_session, request):
    """{variant id: the Future of its suite's run}, all submitted at once to a
    pool of SUITES_AT_ONCE threads: the variants selected for this session
    whose needs this machine has."""
    selected = {
        item.callspec.id
        for item in request.session.items
        if getattr(item, "originalname", None) == "test_generated_suite_passes"
    }
    runs: dict[str, Future] = {}
    with ThreadPoolExecutor(SUITES_AT_ONCE, thread_name_prefix="suite") as pool:
        for param in PAIRWISE_COMBINATIONS:
            (answers,) = param.values
            if param.id not in selected or missing_for(answers):
                continue
            name = f"Realtime {param.id.replace('-', ' ')}"
            project = bake_with(cookies_session, {**answers, "project_name": name})
            runs[param.id] = pool.submit(run_generated_suite, project.project_path)
        yield runs
        # Leaving the pool waits for every run: no suite's servers outlive
        # this module.


@pytest.mark.slow
@pytest.mark.parametrize("answers", PAIRWISE_COMBINATIONS)
def test_generated_suite_passes(generated_suites, answers, request):
    missing = missing_for(answers)
    require(not missing, "; ".join(missing))
    generated_suites[request.node.callspec.id].result()
