"""benchmarks/run.py --quick: every step of the benchmarks, with small numbers,
end to end (two bakes, the baseline, the service straight and through nginx,
two instances behind one nginx, the reconnect storm, a redis-server of its
own), then the page and the chart from its results."""

import importlib.util
import json
import shutil
import sys

import pytest
from conftest import TEMPLATE_DIR, require, run

RUN = TEMPLATE_DIR / "benchmarks" / "run.py"
# The baseline behind the generated nginx too: what nginx alone costs.
TARGETS = {"baseline", "app", "nginx", "baseline_nginx"}


def tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


@pytest.mark.slow
def test_run_quick_measures_every_step_and_writes_the_page(tmp_path):
    for command in ("uv", "redis-server"):
        require(shutil.which(command) is not None, f"{command} is not installed")
    require(
        shutil.which("nginx", path="/usr/sbin:/usr/local/sbin:/usr/bin") is not None,
        "nginx is not installed",
    )
    require(
        importlib.util.find_spec("matplotlib") is not None,
        "matplotlib (requirements-dev.txt) is not installed: it draws the chart",
    )
    result = run(
        [sys.executable, str(RUN), "--quick", "--output-dir", str(tmp_path)],
        cwd=tmp_path,
        timeout=900,
    )
    assert result.returncode == 0, tail(result.stdout)

    results = json.loads((tmp_path / "results.json").read_text())
    assert results["quick"] is True
    assert set(results["variants"]) == {"gthread", "gevent"}
    for worker_class, variant in results["variants"].items():
        echo = variant["echo"]
        assert {row["target"] for row in echo} == TARGETS, worker_class
        assert all(rate > 0 for row in echo for rate in row["rates"]), worker_class
        # --quick measures idle sockets in "memory" only ("capacity" takes
        # the same steps).
        assert "capacity" not in variant, worker_class
        for row in variant["fanout"]:
            report = row["report"]
            assert report["joined"] == report["subscribers"], worker_class
        handshakes = variant["handshakes"]
        assert {row["target"] for row in handshakes} == TARGETS, worker_class
        for row in handshakes:
            assert row["report"]["failed"] == 0, (worker_class, row["target"])
            assert all(rate > 0 for rate in row["rates"]), worker_class
        for row in variant["memory"]:
            assert row["report"]["opened"] > 0, (worker_class, row["target"])
            assert None not in row["per_socket_bytes"], (worker_class, row)
    # Sections only gevent is measured in.
    assert "storm" not in results["variants"]["gthread"]
    gevent = results["variants"]["gevent"]
    (large,) = gevent["fanout_large"]
    assert large["report"]["reached_min"] == results["scale"]["large_subscribers"]
    (storm,) = gevent["storm"]
    assert storm["report"]["all_back"] is True, storm
    (cluster,) = gevent["cluster"]
    assert cluster["report"]["held"] == results["scale"]["cluster_sockets"]
    # Both instances behind nginx took sockets.
    instances = cluster["report"]["service_metrics"]["instances"]
    assert all(one["connections"] > 0 for one in instances), instances
    # The path a full run takes where one process may not hold every socket:
    # nginx workers listening with reuseport, several client processes.
    assert cluster["nginx"]["worker_processes"] == 2
    assert cluster["report"]["client_processes"] == 2
    assert results["errors"] == []
    assert {row["section"] for row in results["sections"]} == {
        "echo",
        "memory",
        "fanout",
        "fanout_large",
        "storm",
        "cluster",
    }
    page = (tmp_path / "BENCHMARKS.md").read_text()
    assert page.startswith("# ")
    assert "python benchmarks/run.py --quick" in page
    assert "| gevent: 20,000 sockets held" not in page  # the quick run's 100
    assert "| gevent: 100 sockets held across two instances" in page
    assert "| 2, reuseport | 2 |" in page
    assert (tmp_path / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
