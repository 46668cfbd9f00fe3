"""benchmarks/loadtest.py and benchmarks/fanout.py, the clients
benchmarks/run.py measures with, and benchmarks/service_metrics.py, which they
read the service's GET /metrics with: run small against a bake's real gunicorn,
with the bake's python as run.py does.

A generated project has a short tool of its own (scripts/loadtest.py), which
its own suite tests; this is the template's fuller one.
"""

import copy
import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from conftest import TEMPLATE_DIR, require, run
from test_generated_suite import locked_venv, run_step

LOADTEST = TEMPLATE_DIR / "benchmarks" / "loadtest.py"
FANOUT = TEMPLATE_DIR / "benchmarks" / "fanout.py"
SERVICE_METRICS = TEMPLATE_DIR / "benchmarks" / "service_metrics.py"
PROFILE_HANDSHAKE = TEMPLATE_DIR / "benchmarks" / "profile_handshake.py"
INSTRUCTIONS = TEMPLATE_DIR / "benchmarks" / "instructions.py"
# A full run's results.json as report.py reads it, from before run.py read
# the service's /metrics: fixed here, so that a new run's results do not
# change what the page tests expect.
RESULTS = Path(__file__).parent / "data" / "results_without_metrics.json"
PASSWORD = "benchmark password"  # noqa: S105 (a throwaway account's)
SETTINGS = {
    "APP_ENV": "testing",
    "SECRET_KEY": secrets.token_urlsafe(48),
    # Every socket of a run is one user's, and each run asks for a token.
    "WS_MAX_SOCKETS_PER_USER": "1000",
    "AUTH_LIMIT_PER_ADDRESS": "100000/minute",
    "AUTH_LIMIT_PER_ACCOUNT": "100000/minute",
}
# One worker of 4 threads keeps 2 for HTTP: 2 sockets fit.
SMALL_WORKER = {"WEB_CONCURRENCY": "1", "GUNICORN_THREADS": "4"}


@dataclass
class Bake:
    path: Path
    package: str
    database_url: str

    def bin(self, name: str) -> str:
        return str(self.path / ".venv" / "bin" / name)

    def environ(self, **settings: str) -> dict:
        """This environment without the app's settings, plus the test's."""
        example = (self.path / ".env.example").read_text()
        names = set(re.findall(r"^([A-Z][A-Z0-9_]*)=", example, re.M))
        environ = {k: v for k, v in os.environ.items() if k not in names}
        return {**environ, **SETTINGS, "DATABASE_URL": self.database_url, **settings}


@dataclass
class Server:
    process: subprocess.Popen
    port: int

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def worker_pids(self) -> list[int]:
        pid = self.process.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        return [int(child) for child in children.split()]


@pytest.fixture(scope="module")
def bench_bake(cookies_session, tmp_path_factory):
    """The default bake with its locked venv, migrated, with one user."""
    uv = shutil.which("uv")
    require(uv is not None, "uv is not installed")
    result = cookies_session.bake(extra_context={}, template=str(TEMPLATE_DIR))
    assert result.exception is None, f"bake failed: {result.exception!r}"
    project = result.project_path
    locked_venv(uv, project)
    database = tmp_path_factory.mktemp("benchmark-db") / "test.db"
    bake = Bake(project, result.context["package_name"], f"sqlite:///{database}")
    flask = [bake.bin("flask"), "--app", bake.package]
    for command in (["db", "upgrade"], ["users", "create", "bench@example.com"]):
        if command[0] == "users":
            command += ["--password", PASSWORD]
        run_step([*flask, *command], cwd=project, timeout=120, env=bake.environ())
    return bake


@pytest.fixture
def start_server(bench_bake, tmp_path):
    """start_server(**settings): the bake's gunicorn on a free port."""
    started = []

    def start(**settings: str) -> Server:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        log = (tmp_path / f"gunicorn-{port}.log").open("w")
        process = subprocess.Popen(
            [bench_bake.bin("gunicorn"), "-c", "gunicorn.conf.py"]
            + ["--bind", f"127.0.0.1:{port}"],
            cwd=bench_bake.path,
            env=bench_bake.environ(**settings),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        started.append(process)
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (tmp_path / log.name).read_text()
            try:
                url = f"http://127.0.0.1:{port}/healthz"
                if requests.get(url, timeout=2).status_code == 200:
                    return Server(process, port)
            except requests.RequestException:  # still booting
                pass
            assert time.monotonic() < deadline, "gunicorn did not answer in 60 s"
            time.sleep(0.1)

    yield start
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in started:
        try:
            process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_loadtest(bake, server, *options: str, tmp_path) -> tuple[int, dict]:
    """Run the client as run.py does; its exit status and JSON report."""
    report_path = tmp_path / f"report-{secrets.token_hex(4)}.json"
    result = run(
        [bake.bin("python"), str(LOADTEST), f"{server.ws_url}/ws/echo", "--quiet"]
        + ["--user", "bench@example.com", "--timeout", "5"]
        + ["--server-pid", str(server.process.pid), "--json", str(report_path)]
        + list(options),
        cwd=tmp_path,
        env={**os.environ, "LOADTEST_PASSWORD": PASSWORD},
        timeout=120,
    )
    assert report_path.exists(), result.stdout
    return result.returncode, json.loads(report_path.read_text())


def refusal(bake, server, *options: str) -> subprocess.CompletedProcess:
    """The client's one line when it refuses `options`; it opens no socket."""
    return subprocess.run(
        [bake.bin("python"), str(LOADTEST), f"{server.ws_url}/ws/echo", "--quiet"]
        + ["--token", "not-needed", *options],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.slow
def test_loadtest_opens_checks_and_holds_every_socket(
    bench_bake, start_server, tmp_path
):
    server = start_server()
    status, report = run_loadtest(
        bench_bake, server, "-n", "10", "--hold", "1", tmp_path=tmp_path
    )
    assert status == 0, report
    assert (report["opened"], report["held"], report["failed"]) == (10, 10, 0)
    assert report["handshake_ms"]["count"] == 10
    assert report["echo_ms"]["p50"] <= report["echo_ms"]["p99"]
    assert report["server"]["processes"] == 1 + len(server.worker_pids())
    assert report["server"]["held_bytes"] > 0
    assert report["server"]["per_socket_bytes"] is not None


@pytest.mark.slow
def test_loadtest_echo_traffic_counts_round_trips(bench_bake, start_server, tmp_path):
    status, report = run_loadtest(
        bench_bake,
        start_server(),
        *("-n", "3", "--hold", "1", "--traffic", "echo", "--compression", "on"),
        tmp_path=tmp_path,
    )
    assert status == 0, report
    assert report["compression"] is True
    assert report["round_trips_per_second"] > 0
    assert report["traffic_ms"]["count"] > 3


@pytest.mark.slow
def test_loadtest_counts_refusals_by_http_status(bench_bake, start_server, tmp_path):
    small = start_server(**SMALL_WORKER)
    status, report = run_loadtest(
        bench_bake,
        small,
        *("-n", "5", "--hold", "0", "--concurrency", "1"),
        tmp_path=tmp_path,
    )
    assert status == 1
    assert report["held"] == 2
    assert report["failures"] == {"HTTP 503": 3}
    assert report["open_at_first_failure"] == 2


@pytest.mark.slow
def test_loadtest_shares_the_sockets_among_client_processes(
    bench_bake, start_server, tmp_path
):
    """As run.py's two-instance section does where one process may not hold
    every socket: each process ramps, holds and checks its share, this one
    samples the server between their steps."""
    server = start_server()
    status, report = run_loadtest(
        bench_bake,
        server,
        *("-n", "9", "--hold", "1", "--processes", "2"),
        tmp_path=tmp_path,
    )
    assert status == 0, report
    assert report["client_processes"] == 2
    assert (report["opened"], report["held"], report["failed"]) == (9, 9, 0)
    assert report["handshake_ms"]["count"] == 9
    assert report["echo_ms"]["count"] == 9
    assert report["server"]["same_processes"] is True
    assert report["server"]["per_socket_bytes"] is not None


@pytest.mark.slow
def test_client_processes_add_up_their_refusals(bench_bake, start_server, tmp_path):
    small = start_server(**SMALL_WORKER)
    status, report = run_loadtest(
        bench_bake,
        small,
        *("-n", "6", "--hold", "0", "--concurrency", "1", "--processes", "2"),
        tmp_path=tmp_path,
    )
    assert status == 1
    assert report["held"] == 2
    assert report["failures"] == {"HTTP 503": 4}
    # A socket counts as open once its echo came back. When the first 503
    # comes, the other process's second socket may be admitted with its echo
    # still on the way (seen once on a loaded machine): one or two.
    assert report["open_at_first_failure"] in (1, 2)


@pytest.mark.slow
def test_the_first_failure_stops_the_ramp_of_every_client_process(
    bench_bake, start_server, tmp_path
):
    small = start_server(**SMALL_WORKER)
    status, report = run_loadtest(
        bench_bake,
        small,
        *("-n", "40", "--hold", "0", "--concurrency", "2", "--processes", "2"),
        "--stop-on-failure",
        tmp_path=tmp_path,
    )
    assert status == 1
    assert report["held"] == 2
    # Each process has at most one handshake in flight when the first fails.
    assert report["failures"]["HTTP 503"] in (1, 2), report["failures"]
    assert report["opened"] + report["failed"] < 40


@pytest.mark.slow
def test_a_server_match_that_fits_two_servers_is_refused(bench_bake, start_server):
    server, other = start_server(), start_server()
    text = "gunicorn -c gunicorn.conf.py"
    result = refusal(bench_bake, server, "--server-match", text)
    assert (result.returncode, result.stdout) == (1, "")
    found = re.fullmatch(
        r"error: --server-match 'gunicorn -c gunicorn\.conf\.py' matches (\d+) "
        r"separate processes \(pids ([\d, ]+)\); give the one to measure with "
        r"--server-pid\n",
        result.stderr,
    )
    assert found, result.stderr
    listed = [int(pid) for pid in found.group(2).split(", ")]
    assert int(found.group(1)) == len(listed)
    # The masters, not their workers, nor the client's own command line.
    assert {server.process.pid, other.process.pid} <= set(listed)
    assert not set(server.worker_pids() + other.worker_pids()) & set(listed)


@pytest.mark.slow
def test_a_server_match_that_fits_nothing_is_refused(bench_bake, start_server):
    result = refusal(bench_bake, start_server(), "--server-match", "no-such-7f3a")
    assert (result.returncode, result.stdout) == (1, "")
    expected = "error: --server-match 'no-such-7f3a' matches no running process\n"
    assert result.stderr == expected


@pytest.mark.slow
def test_a_server_match_that_fits_one_master_measures_it_and_its_workers(
    bench_bake, start_server, tmp_path
):
    server = start_server()
    status, report = run_loadtest(
        bench_bake,
        server,
        *("-n", "2", "--hold", "0", "--server-match", f"127.0.0.1:{server.port}"),
        tmp_path=tmp_path,
    )
    assert status == 0, report
    assert report["server"]["processes"] == 1 + len(server.worker_pids())
    assert report["server"]["same_processes"] is True


@pytest.mark.slow
def test_loadtest_reads_the_services_count_of_what_it_saw(
    bench_bake, start_server, tmp_path
):
    """The refusals the client sees as 503, /metrics names: over_capacity."""
    small = start_server(**SMALL_WORKER)
    status, report = run_loadtest(
        bench_bake,
        small,
        *("-n", "5", "--hold", "0", "--concurrency", "1"),
        *("--metrics-url", small.metrics_url),
        tmp_path=tmp_path,
    )
    assert status == 1
    assert report["failures"] == {"HTTP 503": 3}
    assert report["service_metrics"] == {
        "url": small.metrics_url,
        "capacity": 2.0,
        "route": "/ws/echo",
        "connections": 2.0,
        "handshakes": {
            "accepted": 2.0,
            "unauthenticated": 0.0,
            "forbidden_origin": 0.0,
            "over_user_limit": 0.0,
            "over_capacity": 3.0,
            "unavailable": 0.0,
        },
    }


@pytest.mark.slow
def test_a_metrics_url_that_cannot_be_read_is_refused_before_any_socket(
    bench_bake, start_server
):
    server = start_server()
    wrong = f"http://127.0.0.1:{server.port}/no-metrics-here"
    result = refusal(bench_bake, server, "--metrics-url", wrong)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (f"error: cannot read {wrong}: HTTP Error 404: NOT FOUND\n")
    # Not one handshake reached the server.
    figures = subprocess.run(
        [bench_bake.bin("python"), str(SERVICE_METRICS), server.metrics_url],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(figures.stdout)["handshakes"] == {
        "accepted": 0.0,
        "unauthenticated": 0.0,
        "forbidden_origin": 0.0,
        "over_user_limit": 0.0,
        "over_capacity": 0.0,
        "unavailable": 0.0,
    }


@pytest.mark.slow
def test_fanout_reads_the_services_delivery_time(bench_bake, start_server, tmp_path):
    # broadcast = memory: one worker, so that every socket hears the chat.
    server = start_server(WEB_CONCURRENCY="1")
    token = requests.post(
        f"http://127.0.0.1:{server.port}/auth/token",
        auth=("bench@example.com", PASSWORD),
        timeout=10,
    ).json()["token"]
    report_path = tmp_path / "fanout.json"
    result = run(
        [bench_bake.bin("python"), str(FANOUT), f"{server.ws_url}/ws/chat"]
        + ["-n", "3", "--messages", "2", "--token", token]
        + ["--metrics-url", server.metrics_url, "--json", str(report_path)],
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(report_path.read_text())
    assert report["reached_min"] == 3
    figures = report["service_metrics"]
    # Three subscribers and the sender, two messages each.
    assert (figures["connections"], figures["expected"]) == (4.0, 8)
    assert figures["deliveries"] == 8.0
    assert figures["buckets"]["+Inf"] == 8.0
    assert figures["seconds"] > 0


def load_report():
    """benchmarks/report.py, which needs nothing beyond the standard library
    to write the page (matplotlib draws the chart only)."""
    path = TEMPLATE_DIR / "benchmarks" / "report.py"
    spec = importlib.util.spec_from_file_location("benchmarks_report", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def page(results: dict, tmp_path) -> list[str]:
    path = tmp_path / "BENCHMARKS.md"
    load_report().write_markdown(results, path, "latency.png")
    return path.read_text().splitlines()


# What the service's /metrics said in a run, as loadtest.py and fanout.py
# report it: 128 refusals (503 to the client) were over_capacity.
CAPACITY_FIGURES = {
    "url": "http://127.0.0.1:1/metrics",
    "capacity": 1800.0,
    "route": "/ws/echo",
    "connections": 1584.0,
    "handshakes": {
        "accepted": 1584.0,
        "unauthenticated": 0.0,
        "forbidden_origin": 0.0,
        "over_user_limit": 0.0,
        "over_capacity": 128.0,
        "unavailable": 0.0,
    },
}
DELIVERY_FIGURES = {
    "url": "http://127.0.0.1:1/metrics",
    "connections": 1001.0,
    "expected": 5005,
    "deliveries": 5005.0,
    "seconds": 60.06,
    # Cumulative, as Prometheus's histogram buckets are.
    "buckets": {"0.01": 2000.0, "0.025": 5000.0, "0.05": 5005.0, "+Inf": 5005.0},
}


def test_the_page_says_a_run_without_metrics_measured_everything_from_outside(
    tmp_path,
):
    lines = page(json.loads(RESULTS.read_text()), tmp_path)
    assert (
        "This run did not read the service's /metrics: every figure on this "
        "page is from outside, and the ones marked /metrics below are missing."
    ) in lines
    assert (
        "| the sockets the workers admit | /metrics | websocket_capacity "
        "| the service's own count, rather than working it out from the threads "
        "or worker_connections and the share kept for HTTP |"
    ) in lines
    # No table of figures that were not read.
    assert not [line for line in lines if "the workers admit (per worker)" in line]
    # A 503 is then only a guess at its cause, and says so.
    (gthread,) = [line for line in lines if "gthread, service via nginx: " in line]
    assert gthread.endswith(
        "(inferred from the status: this run did not read /metrics)."
    )


def test_the_page_gives_the_figures_read_from_metrics_beside_the_others(tmp_path):
    results = copy.deepcopy(json.loads(RESULTS.read_text()))
    section = results["variants"]["gthread"]
    for row in section["capacity"]:
        if (row["target"], row["compression"]) == ("nginx", "off"):
            row["report"]["service_metrics"] = CAPACITY_FIGURES
    for row in section["fanout"]:
        if row["target"] == "nginx":
            row["report"]["service_metrics"] = DELIVERY_FIGURES
    lines = page(results, tmp_path)
    assert not [line for line in lines if "did not read the service's" in line]
    capacity = lines.index(
        "| permessage-deflate | target | the workers admit (per worker) "
        "| held at the end of the hold | handshakes by outcome |"
    )
    assert lines[capacity + 2 : capacity + 4] == [
        "| off | service via nginx | 1,800 (900) | 1,584 "
        "| accepted 1,584, over_capacity 128 |",
        "| on | service via nginx | not read | – | – |",
    ]
    (note,) = [line for line in lines if "gthread, service via nginx: " in line]
    assert (
        "First failure: HTTP 503; /metrics counts 128 refused as over_capacity: "
        in note
    )
    assert note.endswith(
        "Its workers admit 1,800 together (websocket_capacity) and held 1,584 at "
        "the end of the hold (websocket_connections), by /metrics."
    )
    delivery = lines.index(
        "| worker class | target | chat sockets held | writes counted "
        "| mean | half within | 99% within | all within |"
    )
    assert lines[delivery + 2 : delivery + 4] == [
        "| gthread | service via nginx | 1,001 | 5,005 of 5,005 | 12.0 ms "
        "| ≤ 25 ms | ≤ 25 ms | ≤ 50 ms |",
        "| gevent | service via nginx | not read | – | – | – | – | – |",
    ]
    (fanout,) = [line for line in lines if "gthread, fan-out." in line]
    assert (
        "its writes came 12.0 ms after publication on average, every one ≤ 50 ms;"
        in fanout
    )


@pytest.mark.parametrize(
    ("load_before", "others", "said"),
    [
        # Load left over from before the run; nothing else ran beside it.
        (
            2.1,
            0.0,
            "- **Other work.** The load average was 2.1 before the run on 2 "
            "cores, but other processes used 0% of its CPU during the run: the "
            "machine was the run's.",
        ),
        (
            0.2,
            0.3,
            "- **Other work.** The load average was 0.2 before the run on 2 "
            "cores, and other processes used 30% of its CPU during the run: "
            "absolute figures are lower than on a quiet machine, and ratios "
            "taken minutes apart carry that noise.",
        ),
    ],
)
def test_the_other_work_note_tells_a_busy_machine_from_a_lagging_load_average(
    load_before, others, said
):
    results = {
        "machine": {"cores": 2},
        "load_before": load_before,
        "others_cpu_share": others,
        "sections": [],
        "variants": {},
    }
    assert load_report().notes(results)[0] == said


def test_a_delivery_time_beyond_the_last_bucket_is_given_as_more_than_it():
    bound = load_report().bucket_bound
    beyond = {"deliveries": 4, "buckets": {"5": 1.0, "10": 2.0, "+Inf": 4.0}}
    assert bound(beyond, 0.5) == "≤ 10 s"
    assert bound(beyond, 1.0) == "> 10 s"
    assert bound({"deliveries": 0, "buckets": {}}, 0.5) == "–"


@pytest.mark.slow
def test_loadtest_counts_handshakes_per_second_and_their_cpu(
    bench_bake, start_server, tmp_path
):
    server = start_server()
    status, report = run_loadtest(
        bench_bake,
        server,
        *("--handshakes", "-n", "20", "--concurrency", "4", "--hold", "0"),
        tmp_path=tmp_path,
    )
    assert status == 0, report
    assert (report["handshakes"], report["failed"]) == (20, 0)
    assert report["handshakes_per_second"] > 0
    assert report["handshake_ms"]["count"] == 20
    assert report["server"]["same_processes"] is True
    assert report["server"]["cpu_ms_per_handshake"] > 0
    # Each socket was closed at once: the service holds none afterwards.
    figures = subprocess.run(
        [bench_bake.bin("python"), str(SERVICE_METRICS), server.metrics_url],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    counted = json.loads(figures.stdout)
    assert counted["handshakes"]["accepted"] == 20.0
    assert counted["connections"].get("/ws/echo", 0.0) == 0.0


@pytest.mark.slow
def test_loadtest_counts_refused_handshakes_by_status(
    bench_bake, start_server, tmp_path
):
    server = start_server()
    report_path = tmp_path / "refused.json"
    result = run(
        [bench_bake.bin("python"), str(LOADTEST), f"{server.ws_url}/ws/echo"]
        + ["--quiet", "--handshakes", "-n", "3", "--token", "not-a-token"]
        + ["--json", str(report_path)],
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 1, result.stdout
    report = json.loads(report_path.read_text())
    assert report["failures"] == {"HTTP 401": 3}
    assert report["handshakes"] == 0


@pytest.mark.slow
def test_loadtest_reads_each_instances_metrics_and_adds_them_up(
    bench_bake, start_server, tmp_path
):
    """Two instances behind a proxy: the client names each /metrics."""
    first, second = start_server(), start_server()
    status, report = run_loadtest(
        bench_bake,
        first,
        *("-n", "3", "--hold", "0"),
        *("--metrics-url", first.metrics_url, "--metrics-url", second.metrics_url),
        tmp_path=tmp_path,
    )
    assert status == 0, report
    figures = report["service_metrics"]
    each = figures["instances"]
    assert [one["url"] for one in each] == [first.metrics_url, second.metrics_url]
    assert [one["connections"] for one in each] == [3.0, 0.0]
    assert [one["handshakes"]["accepted"] for one in each] == [3.0, 0.0]
    assert figures["connections"] == 3.0
    assert figures["handshakes"]["accepted"] == 3.0
    assert figures["capacity"] == sum(one["capacity"] for one in each)


# A run with every section, its figures made up: five rounds, as a full run
# has them (results of a run's sections, in the shapes run.py writes).
def rounds_results() -> dict:
    results = copy.deepcopy(json.loads(RESULTS.read_text()))
    results["scale"].update(
        rounds=5,
        target_connections=100,
        handshakes=2000,
        handshake_concurrency=50,
        large_subscribers=10000,
        large_messages=20,
        storm_sockets=10000,
        cluster_sockets=20000,
    )
    gevent = results["variants"]["gevent"]
    for row in gevent["echo"]:
        row["round_order"] = True
        if row["connections"] == 100:
            row["rates"] = {
                "baseline": [100, 100, 100, 100, 100],
                # ×0.85 to ×0.95: the median ×0.92 is above 0.9 by less.
                "nginx": [92, 85, 95, 93, 90],
                "app": [97, 96, 98, 99, 97],
            }[row["target"]]
    handshakes = {"baseline": [500, 510, 490, 505, 495], "nginx": [420] * 5}
    gevent["handshakes"] = [
        {
            "target": target,
            "rates": rates,
            "cpu_ms": [2.0] * 5,
            "report": {
                "handshakes_per_second": rates[2],
                "failed": 0,
                "handshake_ms": {"p50": 5.0, "p99": 20.0},
                "client_cpu_share": 0.3,
            },
        }
        for target, rates in handshakes.items()
    ]
    gevent["memory"] = [
        {
            "target": target,
            "compression": "off",
            "sockets": 3000,
            "report": {},
            "per_socket_bytes": [kb * 1024 for kb in sizes],
            "proxy_per_socket_bytes": [21 * 1024] * 5,
            "held": [3000] * 5,
        }
        for target, sizes in (("baseline", [36] * 5), ("nginx", [38, 39, 39, 40, 41]))
    ]
    gevent["storm"] = [
        {
            "round": number,
            "exit_status": 0,
            "report": {
                "sockets": 10000,
                "opened": 10000,
                "open_failures": {},
                "all_back": True,
                "all_back_seconds": seconds,
                "back": 10000,
                "failed": 0,
                "failed_by_reason": {},
                "deadline_seconds": 60,
                "close_codes": {"1001": 10000},
                "all_1001": True,
                "back_seconds": {"p50": 3.0, "p99": 9.0},
                "failed_attempts": 12,
                "failed_attempts_by_reason": {"HTTP 502": 12},
                "peak_handshakes_per_second": 800,
                "client_cpu_share": 0.5,
            },
        }
        for number, seconds in enumerate([12.0, 13.5, 11.0, 14.0, 12.5], 1)
    ]
    gevent["fanout_large"] = [
        {
            "round": number,
            "report": {
                "asked": 10000,
                "subscribers": 10000,
                "reached_min": 10000,
                "per_worker": [5000, 5001],
                "all_ms_median": median,
                "all_ms_p99": slowest,
                "p50_ms_median": median / 2,
                "client_cpu_seconds": 3.0,
            },
        }
        for number, (median, slowest) in enumerate(
            [(420, 900), (480, 1100), (450, 950), (430, 980), (470, 990)], 1
        )
    ]
    gevent["cluster"] = [
        {
            "round": 1,
            "tried": 20000,
            "report": {
                "opened": 20000,
                "held": 20000,
                "failed": 0,
                "failures": {},
                "open_at_first_failure": None,
                "ramp_seconds": 50.0,
                "server": {"per_socket_bytes": 40 * 1024},
                "proxy": {"per_socket_bytes": 21 * 1024},
                "service_metrics": {
                    "capacity": 36000.0,
                    "connections": 20000.0,
                    "handshakes": {"accepted": 20000.0},
                    "instances": [{"connections": 10001.0}, {"connections": 9999.0}],
                },
            },
        }
    ]
    results["sections"] = [
        {
            "worker_class": "gevent",
            "section": "storm",
            "seconds": 300.0,
            "others_cpu_share": 0.12,
            "load_before": 0.5,
            "load_after": 1.5,
        }
    ]
    return results


def test_the_targets_give_the_median_the_range_and_whether_it_is_stable(tmp_path):
    lines = page(rounds_results(), tmp_path)
    table = lines.index(
        "| target | measured: median (range over the rounds) | rounds | met | stable |"
    )
    rows = lines[table + 2 : table + 13]
    assert rows == [
        "| gevent: handshakes per second through nginx >= ×0.8 of the baseline's "
        "(direct) | ×0.84 (0.82–0.86): 420 vs 500 (490–510) a second | 5 | yes "
        "| stable |",
        "| gevent: 10,000 sockets closed with 1001 by a deploy all back and "
        "echoing within 20 s, no failure | 12.5 s (11.0–14.0); every client "
        "back, none failed and every close 1001 in 5 of 5 rounds | 5 | yes "
        "| stable |",
        # An older run's figures (one round each) for gthread.
        "| gthread: echo through nginx, 100 connections, >= ×0.9 of the "
        "baseline's round trips | ×0.77: 7,861 vs 10,168 round trips/s | 1 | no "
        "| one round |",
        "| gthread: echo straight, 100 connections, >= ×0.95 of the baseline's "
        "round trips | ×0.81: 8,275 vs 10,168 round trips/s | 1 | no "
        "| one round |",
        # ×0.85–0.95 is wider than 0.92's distance from 0.9.
        "| gevent: echo through nginx, 100 connections, >= ×0.9 of the "
        "baseline's round trips | ×0.92 (0.85–0.95): 92 (85–95) vs 100 round "
        "trips/s | 5 | yes | unstable |",
        "| gevent: echo straight, 100 connections, >= ×0.95 of the baseline's "
        "round trips | ×0.97 (0.96–0.99): 97 (96–99) vs 100 round trips/s | 5 "
        "| yes | unstable |",
        "| gevent: memory per idle socket, permessage-deflate off, <= 40 KB "
        "| 39.0 KB (38.0–41.0) | 5 | yes | unstable |",
        "| gthread: memory per idle socket, permessage-deflate off, <= 60 KB "
        "| 70.6 KB | 1 | no | one round |",
        "| gevent: chat fan-out to 10,000 subscribers, two workers, Redis: "
        "median time to reach all < 500 ms | 450 ms (420–480); every "
        "subscriber reached in 5 of 5 rounds | 5 | yes | unstable |",
        "| gevent: chat fan-out to 10,000 subscribers, two workers, Redis: p99 "
        "time to reach all < 1,000 ms | 980 ms (900–1,100); every subscriber "
        "reached in 5 of 5 rounds | 5 | yes | unstable |",
        "| gevent: 20,000 sockets held across two instances (two gunicorns) "
        "behind one nginx | 20,000 held with no error (of 20,000 tried); first "
        "failure: none | 1 | yes | one round |",
    ]
    assert "| gevent | reconnect storm | 5.0 | 12% | 0.5, 1.5 |" in lines
    assert (
        "| 1 | 20,000 | 20,000 | none | 10,001 + 9,999 | 400 | 40.0 KB | 21.0 KB "
        "| one per core | 1 |"
    ) in lines


def test_the_note_on_echo_gives_the_ratios_the_targets_table_gives(tmp_path):
    """The median of each round's ratio, not the ratio of two median rounds
    taken from different rounds."""
    lines = page(rounds_results(), tmp_path)
    (note,) = [line for line in lines if line.startswith("- **gevent, echo at 100")]
    assert "; the service straight from gunicorn ×0.97 (" in note
    assert "; through nginx ×0.92 (" in note


def test_the_baseline_through_nginx_is_given_beside_the_targets_through_nginx(
    tmp_path,
):
    """What nginx alone costs on the machine: the baseline behind the same
    nginx, in the tables, the targets' lines and the echo note."""
    results = rounds_results()
    gevent = results["variants"]["gevent"]
    (proxied,) = [
        row
        for row in gevent["echo"]
        if (row["target"], row["connections"]) == ("nginx", 100)
    ]
    alone = copy.deepcopy(proxied)
    alone.update(target="baseline_nginx", rates=[70, 72, 75, 68, 74])
    gevent["echo"].append(alone)
    (handshakes,) = [row for row in gevent["handshakes"] if row["target"] == "nginx"]
    alone = copy.deepcopy(handshakes)
    alone.update(target="baseline_nginx", rates=[300, 310, 290, 305, 295])
    gevent["handshakes"].append(alone)
    lines = page(results, tmp_path)
    (handshake_target,) = [
        line for line in lines if line.startswith("| gevent: handshakes per second")
    ]
    assert handshake_target.endswith(
        "a second; the baseline itself through the same nginx: ×0.60 (0.59–0.61) "
        "| 5 | yes | stable |"
    )
    (echo_target,) = [
        line for line in lines if line.startswith("| gevent: echo through nginx")
    ]
    assert (
        "round trips/s; the baseline itself through the same nginx: ×0.72 "
        "(0.68–0.75) | 5 | yes | unstable |"
    ) in echo_target
    (straight,) = [line for line in lines if line.startswith("| gevent: echo straight")]
    assert "the baseline itself" not in straight
    assert any(
        line.startswith("| 100 | baseline via nginx | 72 (68–75) | ×0.72 (0.68–0.75)")
        for line in lines
    )
    assert any(
        line.startswith("| baseline via nginx | 300 (290–310) | ×0.60 (0.59–0.61)")
        for line in lines
    )
    (note,) = [line for line in lines if line.startswith("- **gevent, echo at 100")]
    assert "; the baseline itself through the same nginx ×0.72 (" in note


def test_a_storm_round_that_did_not_bring_everyone_back_fails_the_target(
    tmp_path,
):
    results = rounds_results()
    last = results["variants"]["gevent"]["storm"][-1]["report"]
    last.update(all_back=False, all_back_seconds=None, back=9990, failed=10)
    last["failed_by_reason"] = {"last attempt: HTTP 503": 10}
    lines = page(results, tmp_path)
    (row,) = [line for line in lines if line.startswith("| gevent: 10,000 sockets")]
    assert row.endswith(
        "| 13.5 s (11.0–never); every client back, none failed and every close "
        "1001 in 4 of 5 rounds | 5 | no | unstable |"
    )
    assert (
        "| 5 | 10,000 | not within 60 s | 3.0 s / 9.0 s | 1001: 10,000 "
        "| last attempt: HTTP 503: 10 | 12 (HTTP 502: 12) | 800 | 50% | – |"
    ) in lines


def test_a_figure_is_unstable_when_its_range_is_wider_than_its_gap():
    unstable = load_report().unstable
    assert unstable([0.85, 0.92, 0.95], 0.9) is True
    assert unstable([0.95, 0.97, 0.99], 0.9) is False
    # One round has no range to judge by.
    assert unstable([0.5], 0.9) is False
    assert unstable([None, 0.95, 0.96], 0.9) is False


def test_the_page_says_it_is_generated_and_keeps_the_notes_written_by_hand(
    tmp_path,
):
    lines = page(json.loads(RESULTS.read_text()), tmp_path)
    assert lines[2] == (
        "<!-- Written by benchmarks/report.py from results.json: edit report.py, "
        "or NOTES.md for notes by hand, not this page. -->"
    )
    notes = (TEMPLATE_DIR / "benchmarks" / "NOTES.md").read_text().splitlines()
    start = lines.index(notes[0])
    assert lines[start : start + len(notes)] == notes


def test_a_storm_round_without_a_report_counts_as_failed(tmp_path):
    results = rounds_results()
    storm = results["variants"]["gevent"]["storm"]
    storm[-1] = {
        "round": 5,
        "exit_status": "timed out after 460 s",
        "error": "...",
        "report": {},
    }
    lines = page(results, tmp_path)
    (row,) = [line for line in lines if line.startswith("| gevent: 10,000 sockets")]
    assert row.endswith(
        "| 13.5 s (11.0–never); every client back, none failed and every close "
        "1001 in 4 of 5 rounds | 5 | no | unstable |"
    )
    assert (
        "| 5 | – | storm.py wrote no report (timed out after 460 s) "
        "| – | – | – | – | – | – | – |"
    ) in lines


@pytest.fixture(scope="module")
def redis_gevent_bake(cookies_session):
    """A gevent bake with broadcast = redis, as run.py and profile_handshake.py
    bake it (the baseline's chat and the floor use redis-py): its path."""
    uv = shutil.which("uv")
    require(uv is not None, "uv is not installed")
    answers = {"worker_class": "gevent", "broadcast": "redis"}
    result = cookies_session.bake(extra_context=answers, template=str(TEMPLATE_DIR))
    assert result.exception is None, f"bake failed: {result.exception!r}"
    locked_venv(uv, result.project_path)
    return result.project_path


@pytest.mark.slow
def test_profile_handshake_times_the_floor_beside_the_baseline_and_service(
    redis_gevent_bake, tmp_path
):
    """benchmarks/profile_handshake.py with `--floor`, small: every target
    (the baseline, the service and two floors, each straight and through
    nginx) answers each handshake with 101, and each floor that counts its
    sockets in Redis has counted every one out again by the end."""
    require(shutil.which("redis-server") is not None, "redis-server is not installed")
    require(
        shutil.which("nginx", path="/usr/sbin:/usr/local/sbin:/usr/bin") is not None,
        "nginx is not installed",
    )
    report_path = tmp_path / "profile.json"
    python = str(redis_gevent_bake / ".venv" / "bin" / "python")
    result = run(
        [python, str(PROFILE_HANDSHAKE), str(redis_gevent_bake)]
        + ["--rounds", "1", "--handshakes", "40", "--concurrency", "5"]
        + ["--steps", "handshakes_concurrent,handshakes_one_at_a_time"]
        + ["--floor", "token", "--floor", "token,user,count"]
        + ["--no-profile", "--json", str(report_path)],
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    report = json.loads(report_path.read_text())
    (row,) = report["rounds"]
    floors = ["floor[token]", "floor[token,user,count]"]
    targets = ["baseline", "service", "nginx", *floors]
    targets += [f"{floor} via nginx" for floor in floors]
    steps = ["handshakes_concurrent", "handshakes_one_at_a_time"]
    assert sorted(row) == sorted(f"{t}/{s}" for t in targets for s in steps)
    assert all(figures["per_second"] > 0 for figures in row.values())
    assert report["floor_counted_at_the_end"] == dict.fromkeys(floors, 0)


@pytest.mark.slow
def test_instructions_counts_echo_messages_and_handshakes_of_each_target(
    redis_gevent_bake, tmp_path
):
    """benchmarks/instructions.py, small: the baseline, the service and a
    floor run under callgrind, each booted once, answer every echo and every
    handshake, and each is counted at what one costs: tens or hundreds of
    thousands of instructions a message and millions a handshake, not nothing
    (the count missed the worker) nor ten times that (it took in the boot or
    the warm-up)."""
    require(shutil.which("valgrind") is not None, "valgrind is not installed")
    require(shutil.which("redis-server") is not None, "redis-server is not installed")
    report_path = tmp_path / "instructions.json"
    python = str(redis_gevent_bake / ".venv" / "bin" / "python")
    result = run(
        [python, str(INSTRUCTIONS), str(redis_gevent_bake)]
        + ["--sockets", "2", "--messages", "30", "--top", "5"]
        + ["--handshakes", "20", "--concurrency", "5", "--floor", "token,user,count"]
        + ["--json", str(report_path)],
        cwd=tmp_path,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    report = json.loads(report_path.read_text())
    assert report["worker_class"] == "gevent"
    targets = ["baseline", "service", "floor:token,user,count"]
    plausible = {
        "sockets=2": (20_000, 2_000_000),
        "handshakes=20": (500_000, 50_000_000),
    }
    for name, (low, high) in plausible.items():
        entry = report[name]
        unit = "message" if name.startswith("sockets") else "handshake"
        assert entry[unit + "s"] == (30 if unit == "message" else 20)
        per_unit = entry["per_" + unit]
        assert sorted(per_unit) == sorted(targets)
        for target in targets:
            assert low < per_unit[target] < high, entry
            assert entry["ratios"][target] == pytest.approx(
                per_unit[target] / per_unit["baseline"]
            )
        assert len(entry["most_added"]) == len(entry["most_saved"]) == 5
    # A handshake costs the service more than the baseline's: it does more.
    assert report["handshakes=20"]["ratios"]["service"] > 1
