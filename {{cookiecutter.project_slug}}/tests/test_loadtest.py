"""scripts/loadtest.py, the load tool the README's numbers come from, run
small against the test server."""

import json
import re
import subprocess
import sys

from .conftest import PASSWORD, PROJECT_ROOT, SMALL_WORKER

LOADTEST = PROJECT_ROOT / "scripts" / "loadtest.py"


def run_loadtest(server, email: str, *options: str, tmp_path) -> tuple[int, dict]:
    """Run the tool as a user would; returns its exit status and JSON report."""
    report_path = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, str(LOADTEST), f"{server.ws_url}/ws/echo", "--quiet"]
        + ["--user", email, "--password", PASSWORD, "--timeout", "5"]
        + ["--server-pid", str(server.process.pid), "--json", str(report_path)]
        + list(options),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert report_path.exists(), result.stderr
    return result.returncode, json.loads(report_path.read_text())


def test_loadtest_opens_checks_and_holds_every_socket(server, alice, tmp_path):
    status, report = run_loadtest(
        server, alice, "-n", "10", "--hold", "1", tmp_path=tmp_path
    )
    assert status == 0, report
    assert (report["opened"], report["held"], report["failed"]) == (10, 10, 0)
    assert report["handshake_ms"]["count"] == 10
    assert report["echo_ms"]["p50"] <= report["echo_ms"]["p99"]
    assert report["server"]["processes"] >= 2  # the master and its workers
    assert report["server"]["held_bytes"] > 0
    assert report["server"]["per_socket_bytes"] is not None


def test_loadtest_echo_traffic_counts_round_trips(server, alice, tmp_path):
    status, report = run_loadtest(
        server,
        alice,
        *("-n", "3", "--hold", "1", "--traffic", "echo", "--compression", "on"),
        tmp_path=tmp_path,
    )
    assert status == 0, report
    assert report["compression"] is True
    assert report["round_trips_per_second"] > 0
    assert report["traffic_ms"]["count"] > 3


def test_loadtest_counts_refusals_by_http_status(start_server, alice, tmp_path):
    # One worker of 4 (threads or connections) keeps 2 for HTTP: 2 sockets fit.
    small = start_server(**SMALL_WORKER)
    status, report = run_loadtest(
        small, alice, "-n", "5", "--hold", "0", "--concurrency", "1", tmp_path=tmp_path
    )
    assert status == 1
    assert report["held"] == 2
    assert report["failures"] == {"HTTP 503": 3}
    assert report["open_at_first_failure"] == 2


def refusal(server, *options: str) -> str:
    """The tool's one line when it refuses `options`; it opens no socket."""
    result = subprocess.run(
        [sys.executable, str(LOADTEST), f"{server.ws_url}/ws/echo", "--quiet"]
        + ["--token", "not-needed", *options],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    return result.stderr


def test_a_server_match_that_fits_two_servers_is_refused(server, start_server):
    other = start_server()
    text = "gunicorn -c gunicorn.conf.py"
    line = refusal(server, "--server-match", text)
    found = re.fullmatch(
        r"error: --server-match 'gunicorn -c gunicorn\.conf\.py' matches (\d+) "
        r"separate processes \(pids ([\d, ]+)\); give the one to measure with "
        r"--server-pid\n",
        line,
    )
    assert found, line
    listed = [int(pid) for pid in found.group(2).split(", ")]
    assert int(found.group(1)) == len(listed)
    # The masters, not their workers, nor the tool's own command line.
    assert {server.process.pid, other.process.pid} <= set(listed)
    assert not set(server.worker_pids() + other.worker_pids()) & set(listed)


def test_a_server_match_that_fits_nothing_is_refused(server):
    line = refusal(server, "--server-match", "no-such-server-7f3a")
    expected = "error: --server-match 'no-such-server-7f3a' matches no running process"
    assert line == expected + "\n"


def test_a_server_match_that_fits_one_master_measures_it_and_its_workers(
    server, alice, tmp_path
):
    status, report = run_loadtest(
        server,
        alice,
        *("-n", "2", "--hold", "0", "--server-match", f"127.0.0.1:{server.port}"),
        tmp_path=tmp_path,
    )
    assert status == 0, report
    assert report["server"]["processes"] == 1 + len(server.worker_pids())
    assert report["server"]["same_processes"] is True
