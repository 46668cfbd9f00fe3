"""Shared helpers for the template's own tests.

``bake(**answers)`` generates a project with pytest-cookies and returns its
result; ``baked(**answers)`` does the same once per session for tests that
only read the output. ``require(condition, reason)`` skips a test whose
prerequisite is missing, except under ``REQUIRE_ALL=1`` (CI), where a missing
prerequisite is a failure.
"""

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

TEMPLATE_DIR = Path(__file__).resolve().parents[1]
PROJECT_TEMPLATE_DIR = TEMPLATE_DIR / "{{cookiecutter.project_slug}}"
COOKIECUTTER_JSON = json.loads((TEMPLATE_DIR / "cookiecutter.json").read_text())

# Every question that offers choices, with its choices; the first is the default.
CHOICES = {
    key: value
    for key, value in COOKIECUTTER_JSON.items()
    if not key.startswith("_") and isinstance(value, list)
}

# The defaults, then each non-default choice of each question on its own (a
# default choice baked alone is the defaults bake again).
EACH_CHOICE_ALONE = [pytest.param({}, id="defaults")] + [
    pytest.param({key: value}, id=f"{key}={value}")
    for key, values in CHOICES.items()
    for value in values[1:]
]

# The post-gen hook records the answers in this file, named after cookiecutter.
ANSWERS_RECORD = ".cookiecutter.json"

UNRENDERED_PATTERNS = [
    re.compile(r"\{\{-?\s*cookiecutter\b"),
    re.compile(r"\{\{[^}\n]*\bcookiecutter\."),
    re.compile(r"\{%-?[^%\n]*\bcookiecutter\."),
    re.compile(r"\{%-?\s*(end)?raw\s*-?%\}"),
]


def require(condition, reason):
    """Skip when ``condition`` is false; fail instead when REQUIRE_ALL=1."""
    if condition:
        return
    if os.environ.get("REQUIRE_ALL") == "1":
        pytest.fail(f"required but missing: {reason}")
    pytest.skip(reason)


def template_has(relative_path):
    """Whether the project template ships this path (before any hook runs)."""
    return (PROJECT_TEMPLATE_DIR / relative_path).exists()


def text_files(root):
    """Yield (path, text) for every file under root that is not binary."""
    for path in sorted(root.rglob("*")):
        if not path.is_file() or ".venv" in path.relative_to(root).parts:
            continue
        data = path.read_bytes()
        if b"\0" in data:
            continue
        yield path, data.decode("utf-8", errors="replace")


def unrendered_leftovers(root):
    """Lines (and names) under root that still hold template syntax."""
    found = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        named_after_cookiecutter = "cookiecutter" in str(relative)
        if "{{" in str(relative) or (
            named_after_cookiecutter and str(relative) != ANSWERS_RECORD
        ):
            found.append(f"{relative}: unrendered name")
    for path, text in text_files(root):
        for number, line in enumerate(text.splitlines(), start=1):
            if any(pattern.search(line) for pattern in UNRENDERED_PATTERNS):
                found.append(f"{path.relative_to(root)}:{number}: {line.strip()}")
    return found


def run(command, cwd, timeout=600, env=None):
    """Run a command, capturing stdout and stderr together as text.

    On a timeout (or a Ctrl-C), what it started goes with it (its process
    group): a server of a generated suite or of run.py, or a redis-server,
    left running would hold a port and the CPU for the tests after it. A
    timeout raises TimeoutExpired with the output so far."""
    with subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    ) as process:
        try:
            output, _ = process.communicate(timeout=timeout)
        except BaseException as error:  # a Ctrl-C too: it reaches only pytest
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            if not isinstance(error, subprocess.TimeoutExpired):
                raise
            try:
                output, _ = process.communicate(timeout=30)
            except subprocess.TimeoutExpired:  # a process of its own session
                output = None  # still holds the output open
            raise subprocess.TimeoutExpired(command, timeout, output=output) from None
    return subprocess.CompletedProcess(command, process.returncode, output)


def free_port():
    """A port of 127.0.0.1 that nothing listens on at the moment."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ruff(*arguments, cwd):
    """Run the ruff of this environment inside ``cwd``, with no cache."""
    return run([sys.executable, "-m", "ruff", *arguments, "--no-cache"], cwd=cwd)


def bake_with(cookies, answers):
    result = cookies.bake(extra_context=answers, template=str(TEMPLATE_DIR))
    assert result.exit_code == 0, f"bake {answers} failed: {result.exception!r}"
    assert result.exception is None, f"bake {answers} failed: {result.exception!r}"
    return result


@pytest.fixture
def bake(cookies):
    """A fresh bake for each call: ``bake(database="postgresql")``."""

    def bake_with_answers(**answers):
        return bake_with(cookies, answers)

    return bake_with_answers


@pytest.fixture(scope="session")
def baked(cookies_session):
    """One bake per distinct set of answers, shared by the whole session.

    For tests that only read the generated files; a test that changes the
    project or needs its own secret uses ``bake``.
    """
    cache = {}

    def bake_once(**answers):
        key = tuple(sorted(answers.items()))
        if key not in cache:
            cache[key] = bake_with(cookies_session, answers)
        return cache[key]

    return bake_once


@pytest.fixture
def config_file(tmp_path):
    """A cookiecutter config that keeps replays and clones out of the user's home."""
    path = tmp_path / "cookiecutterrc.yaml"
    path.write_text(
        f"cookiecutters_dir: {tmp_path / 'cookiecutters'}\n"
        f"replay_dir: {tmp_path / 'replay'}\n"
    )
    return path
