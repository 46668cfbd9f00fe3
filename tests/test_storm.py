"""benchmarks/storm.py, the reconnect storm of a deploy: run small against a
gevent bake, the worker class the storm is measured on (thousands of
sockets), with the bake's python as the benchmarks run it.

It starts its own gunicorn and nginx from the bake, so a bake with its locked
venv is all a test gives it.
"""

import json
import re
import shutil

import pytest
from conftest import TEMPLATE_DIR, require, run
from test_generated_suite import locked_venv

STORM = TEMPLATE_DIR / "benchmarks" / "storm.py"
SOCKETS = 30
# What a client may meet on its way back: nginx's 502 while no gunicorn
# listens, or when a stopping gunicorn closes its listening socket with
# connections still queued there (504, or its own timeout, while the new
# one's workers boot on a loaded machine); a stopping worker's 503, or its
# 1001 to a socket it took just before it was told to stop.
REFUSALS = re.compile(r"HTTP 50[234]|timeout \(handshake\)|closed 1001 \(echo\)")


def find_nginx() -> str | None:
    """Debian installs nginx in /usr/sbin, off a user's PATH."""
    return shutil.which("nginx") or shutil.which(
        "nginx", path="/usr/sbin:/usr/local/sbin"
    )


@pytest.fixture(scope="module", params=["gevent"])
def storm_bake(request, cookies_session):
    """(worker class, a bake of it with its locked venv): SQLite, memory chat."""
    uv = shutil.which("uv")
    require(uv is not None, "uv is not installed")
    require(find_nginx() is not None, "nginx is not installed")
    result = cookies_session.bake(
        extra_context={"worker_class": request.param}, template=str(TEMPLATE_DIR)
    )
    assert result.exception is None, f"bake failed: {result.exception!r}"
    locked_venv(uv, result.project_path)
    return request.param, result.project_path


@pytest.mark.slow
@pytest.mark.parametrize("takeover", ["overlap", "sequential"])
def test_every_socket_gets_1001_and_comes_back_after_a_restart(
    storm_bake, tmp_path, takeover
):
    worker_class, bake = storm_bake
    report_path = tmp_path / "storm.json"
    # A short backoff: the new gunicorn boots in a few seconds, and the clients
    # should not sleep long past it (the defaults allow up to 30 s).
    result = run(
        [str(bake / ".venv" / "bin" / "python"), str(STORM), str(bake)]
        + ["-n", str(SOCKETS), "--base", "0.2", "--cap", "2", "--deadline", "90"]
        + ["--takeover", takeover, "--quiet", "--json", str(report_path)],
        cwd=tmp_path,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout
    report = json.loads(report_path.read_text())
    assert (report["opened"], report["open_failures"]) == (SOCKETS, {})
    # Every socket closed with 1001 at the SIGTERM, came back and echoed.
    assert report["close_codes"] == {"1001": SOCKETS}
    assert report["all_1001"] is True
    assert (report["all_back"], report["back"], report["failed"]) == (
        True,
        SOCKETS,
        0,
    )
    assert report["failed_by_reason"] == {}
    assert report["closed_again"] == {}
    assert report["back_seconds"]["count"] == SOCKETS
    assert report["back_seconds"]["max"] == report["all_back_seconds"]
    assert report["back_seconds"]["p50"] <= report["back_seconds"]["p99"]
    assert report["back_after_close_seconds"]["count"] == SOCKETS
    # One attempt per client succeeded; every other has a reason, and only
    # those that failed at the echo had their handshake.
    reasons = report["failed_attempts_by_reason"]
    assert report["attempts"] == SOCKETS + report["failed_attempts"]
    assert sum(reasons.values()) == report["failed_attempts"]
    assert [reason for reason in reasons if not REFUSALS.fullmatch(reason)] == []
    assert report["handshakes"] == SOCKETS + reasons.get("closed 1001 (echo)", 0)
    assert 1 <= report["peak_handshakes_per_second"] <= report["handshakes"]
    assert 1 <= report["peak_attempts_per_second"] <= report["attempts"]
    series = report["by_second"]
    assert sum(series["back"]) == SOCKETS
    assert sum(series["handshakes"]) == report["handshakes"]
    assert sum(series["attempts"]) == report["attempts"]
    gunicorn = report["gunicorn"]
    if takeover == "overlap":
        # Started, and each of its workers ready, before the SIGTERM.
        assert gunicorn["new_started"] <= gunicorn["new_ready"] <= 0
        assert "port_released" not in gunicorn
    else:
        assert 0 <= gunicorn["port_released"] <= gunicorn["new_started"]
        assert gunicorn["new_started"] <= gunicorn["new_answered"]
    assert report["takeover"] == takeover
    # Where the CPU went during the storm, part by part.
    cpu = report["cpu"]
    parts = {"client", "machine", "old gunicorn", "new gunicorn", "nginx"}
    assert set(cpu["cpu_seconds"]) == parts | {"others"}
    assert set(cpu["waited_for_cpu_seconds"]) == parts - {"machine"}
    assert cpu["cpu_seconds"]["new gunicorn"] > 0
    assert all(len(series) >= 1 for series in cpu["cpu_by_second"].values())
    assert report["backoff"] == {"kind": "full jitter", "base": 0.2, "cap": 2.0}
    assert report["worker_class"] == worker_class
    assert "all back and echoed" in result.stdout
