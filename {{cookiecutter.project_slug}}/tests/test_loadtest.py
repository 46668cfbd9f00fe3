"""scripts/loadtest.py, the capacity check docs/capacity.md shows, against the
real server: real sockets, exact counts."""

import os
import re
import shlex
import signal
import subprocess
import sys

import pytest
import requests

from .conftest import (
    PASSWORD,
    PROJECT_ROOT,
    SMALL_WORKER,
    SMALL_WORKER_SOCKETS,
    wait_until,
)

LOADTEST = PROJECT_ROOT / "scripts" / "loadtest.py"
CAPACITY = PROJECT_ROOT / "docs" / "capacity.md"
# The gauge of /metrics that counts the echo sockets open.
OPEN_ECHO_SOCKETS = re.compile(
    r'^websocket_connections\{route="/ws/echo"\} (\S+)$', re.MULTILINE
)
# Where docs/capacity.md expects the server; the test's is on a free port.
DOCS_ADDRESS = "127.0.0.1:8000"


def open_echo_sockets(server) -> float:
    found = OPEN_ECHO_SOCKETS.search(
        requests.get(f"{server.url}/metrics", timeout=10).text
    )
    return 0 if found is None else float(found[1])


def loadtest(arguments: list[str], **popen) -> subprocess.Popen:
    """The tool as a user runs it, the password in LOADTEST_PASSWORD."""
    return subprocess.Popen(
        [sys.executable, str(LOADTEST), *arguments],
        env={**os.environ, "LOADTEST_PASSWORD": PASSWORD},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def finish(process: subprocess.Popen) -> tuple[int, list[str], str]:
    """(exit status, lines printed, stderr) once the tool ends."""
    stdout, stderr = process.communicate(timeout=120)
    return process.returncode, stdout.splitlines(), stderr


def run_loadtest(server, email: str, *options: str) -> tuple[int, list[str], str]:
    url = f"{server.ws_url}/ws/echo"
    return finish(loadtest([url, "--user", email, *options]))


def documented_command() -> list[str]:
    """The loadtest command of docs/capacity.md, as words."""
    blocks = re.findall(r"^```sh\n(.*?)^```$", CAPACITY.read_text(), re.M | re.S)
    commands = [
        shlex.split(block.replace("\\\n", " "))
        for block in blocks
        if block.startswith("python scripts/loadtest.py")
    ]
    assert len(commands) == 1, "docs/capacity.md shows the tool once"
    return commands[0]


def test_the_documented_command_opens_holds_and_echoes_on_every_socket(
    server, make_user
):
    words = documented_command()
    assert words[:2] == ["python", "scripts/loadtest.py"]
    # Scaled down: to one user's limit of sockets (WS_MAX_SOCKETS_PER_USER),
    # one second, this suite's server and a user of its own.
    replaced = {
        f"ws://{DOCS_ADDRESS}/ws/echo": f"{server.ws_url}/ws/echo",
        "1000": "10",
        "30": "1",
        "you@example.com": make_user(),
        "$(cat gunicorn.pid)": str(server.process.pid),
    }
    for word in replaced:
        assert word in words, f"docs/capacity.md's command no longer has {word}"
    arguments = [replaced.get(word, word) for word in words[2:]]

    status, lines, stderr = finish(loadtest(arguments, cwd=PROJECT_ROOT))

    assert status == 0, stderr
    assert (
        lines[0]
        == "sockets    10 asked, 10 opened, 10 held 1 s and answering, 0 failed"
    )
    assert re.fullmatch(r"opening    [1-9]\d* handshakes per second", lines[1])
    memory = re.fullmatch(
        r"server     (\d+) processes, ([\d.]+) MB before, ([\d.]+) MB holding, "
        r"(-?[\d.]+) KB per socket",
        lines[2],
    )
    assert memory, lines[2]
    # The master and its workers.
    assert int(memory[1]) == 1 + len(server.worker_pids())
    assert float(memory[2]) > 10 and float(memory[3]) > 10
    assert len(lines) == 3


def test_sockets_past_a_full_worker_are_counted_as_http_503(start_server, make_user):
    small = start_server(**SMALL_WORKER)
    asked = SMALL_WORKER_SOCKETS + 3
    status, lines, _ = run_loadtest(
        small, make_user(), *("-n", str(asked), "--hold", "0", "--concurrency", "1")
    )
    assert status == 1
    assert lines == [
        f"sockets    {asked} asked, 2 opened, 2 held 0 s and answering, 3 failed",
        "failures   HTTP 503: 3",
        lines[2],
    ]
    assert lines[2].startswith("opening    ")


def test_sockets_past_the_user_limit_are_counted_as_http_429(server, make_user):
    status, lines, _ = run_loadtest(
        server, make_user(), *("-n", "12", "--hold", "0", "--concurrency", "1")
    )
    assert status == 1
    assert lines[:2] == [
        "sockets    12 asked, 10 opened, 10 held 0 s and answering, 2 failed",
        "failures   HTTP 429: 2",
    ]


def test_sockets_the_server_closes_during_the_hold_count_by_close_code(
    start_server, make_user
):
    doomed, email = start_server(), make_user()
    url = f"{doomed.ws_url}/ws/echo"
    tool = loadtest([url, "--user", email, "-n", "3", "--hold", "10"])
    try:
        # Counted once the handshake is over and the socket is registered for
        # the shutdown's close (the log's "opened" line comes before the 101).
        wait_until(lambda: open_echo_sockets(doomed) == 3, 15, "3 sockets open")
        doomed.process.send_signal(signal.SIGTERM)  # a deploy: 1001 to each
        status, lines, _ = finish(tool)
    finally:
        tool.kill()
    assert status == 1
    assert lines[:2] == [
        "sockets    3 asked, 3 opened, 0 held 10 s and answering, 3 failed",
        "failures   closed 1001: 3",
    ]


def test_a_wrong_password_stops_the_tool_with_one_line(server, make_user):
    email = make_user()
    process = subprocess.run(
        [sys.executable, str(LOADTEST), f"{server.ws_url}/ws/echo", "--user", email],
        env={**os.environ, "LOADTEST_PASSWORD": "not the password"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert process.returncode == 1
    assert process.stdout == ""
    assert process.stderr == (
        f"error: {server.url}/auth/token answered 401; check --user and the password\n"
    )


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        (
            ["http://127.0.0.1:8000/ws/echo", "--token", "t"],
            "the URL must start with ws:// or wss://",
        ),
        (["ws://127.0.0.1:8000/ws/echo"], "give --user EMAIL (or --token)"),
    ],
)
def test_bad_arguments_are_refused_with_one_line(arguments, error):
    status, lines, stderr = finish(loadtest(arguments))
    assert status == 2
    assert lines == []
    assert stderr.splitlines()[-1] == f"loadtest.py: error: {error}"
