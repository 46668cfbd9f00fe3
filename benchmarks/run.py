"""Benchmarks: the generated service against plain Flask-Sock, same machine, same run.

    python -m pip install -r benchmarks/requirements.txt
    python benchmarks/run.py           # every figure, about an hour
    python benchmarks/run.py --quick   # the same steps with small numbers
    python benchmarks/run.py --sections storm,cluster --set cluster_sockets=5000

It bakes the template twice (worker_class gthread and gevent, broadcast redis),
installs each bake into its own venv, starts a redis-server of its own on a
free port, and for each worker class measures, in one run:

- the baseline: benchmarks/baseline_app.py, Flask-Sock's tutorial echo app,
  under gunicorn with the same settings as the service, without nginx;
- the service straight from gunicorn ("app"), and through the generated nginx
  configuration run by the machine's nginx ("nginx");
- in the echo section, the baseline behind the same generated nginx too
  ("baseline_nginx", at the targets' connection count and for handshakes):
  what nginx alone costs on this machine, apart from the service.

Figures, by section (`--sections` picks some): echo round trips per second
and p50/p99 latency at 1, 100 and 1,000 connections, and handshakes per
second ("echo"); the most sockets held with no error ("capacity"); memory
per idle socket, with permessage-deflate off and on ("memory"); chat fan-out
time to 1,000 subscribers on two workers ("fanout"). For gevent only, the
worker class their targets name: fan-out to 10,000 subscribers
("fanout_large"), the reconnect storm of a deploy at 10,000 sockets
(benchmarks/storm.py, run as a subprocess: "storm"), and 20,000 sockets on
two gunicorn instances behind one nginx ("cluster"). The clients are
benchmarks/loadtest.py and benchmarks/fanout.py, run by each bake's venv
python.

Noise: what is compared takes turns on the same machine, in `rounds` rounds
(five in a full run), and every round's figure is kept, so that BENCHMARKS.md
gives each as the median with its range and can tell when the range is wider
than the difference claimed. Each section records the CPU that other work on
the machine used while it ran (/proc/stat, less the run's own processes). A
section that fails is recorded, the others still run, and the run exits 1.

Most figures are measured from outside: by the client, from /proc, from the
kernel's TCP table. The baseline has no /metrics, so every figure compared
with it is measured that way on both. What the service counts itself is read
from its GET /metrics as well, where that is simpler than measuring it
(benchmarks/service_metrics.py): the sockets its workers admit together, the
sockets they hold at the end of the hold (each instance's, with two), the
handshakes by outcome (why a socket was refused), and the chat's own delivery
time. BENCHMARKS.md says which figure came from where.

It writes results.json, then BENCHMARKS.md and latency.png from it
(benchmarks/report.py, which also rewrites them from an earlier results.json
without measuring), to benchmarks/ (--quick: to a temporary folder, unless
--output-dir says otherwise). Only loopback addresses are used.

File descriptors: the run raises its open-file limit to the hard limit for
itself and the servers it starts; loadtest.py and fanout.py raise their own
hard limit as root when N needs more, and nginx's workers get twice their
worker_connections.
"""

import argparse
import concurrent.futures
import contextlib
import dataclasses
import datetime
import functools
import importlib.util
import json
import math
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import requests  # cookiecutter's own dependency
from report import write_report

BENCHMARKS = Path(__file__).resolve().parent
TEMPLATE = BENCHMARKS.parent
WORKER_CLASSES = ("gthread", "gevent")
USER = "bench@example.com"
PASSWORD = secrets.token_urlsafe(16)

# The gunicorn settings the baseline and the service share. Two workers: one
# per core, and the fan-out must cross workers. gthread: each socket holds a
# thread, so a thousand per worker lets it take 1,000 connections; gevent: ten
# thousand greenlets per worker.
WORKERS = 2
THREADS = 1000
WORKER_CONNECTIONS = 10000
KEEPALIVE = 5
TIMEOUT = 30
# nginx: two connections per proxied socket; raised as the generated
# docs/capacity.md says, so that nginx is never the limit being measured.
NGINX_WORKER_CONNECTIONS = 32768


def nginx_descriptors(worker_connections: int) -> int:
    """worker_rlimit_nofile: twice worker_connections, as the generated
    config has it, up to the hard limit, which nginx cannot raise either."""
    wanted = 2 * worker_connections
    _, limit = resource.getrlimit(resource.RLIMIT_NOFILE)
    return wanted if limit == resource.RLIM_INFINITY else min(wanted, limit)


@dataclass(frozen=True)
class Scale:
    connection_counts: tuple[int, ...]
    # The connection count the echo targets name (BENCHMARKS.md's Targets).
    target_connections: int
    echo_seconds: float
    # Rounds in which the targets compared take turns: echo and handshakes.
    rounds: int
    # Handshakes per round and target, and how many at a time.
    handshakes: int
    handshake_concurrency: int
    most_sockets: dict[str, int]
    hold_seconds: float
    # Idle sockets whose memory is measured, on a fresh server each round.
    memory_sockets: dict[str, int]
    # Rounds of it, permessage-deflate off (a target) and on (none).
    memory_rounds: int
    compressed_rounds: int
    subscribers: int
    fanout_messages: int
    # Sockets opened and closed before memory is first measured.
    warmup: int
    # gevent only: chat fan-out to many subscribers, the reconnect storm of
    # a deploy (benchmarks/storm.py), and sockets held by two instances
    # behind one nginx; each with its own rounds.
    large_subscribers: int
    large_messages: int
    large_rounds: int
    storm_sockets: int
    storm_rounds: int
    storm_deadline: float
    # The clients' backoff (base, cap) in seconds; None: storm.py's own,
    # the generated client's.
    storm_backoff: tuple[float, float] | None
    cluster_sockets: int
    cluster_rounds: int
    # None: as many nginx workers and client processes as the open-file
    # limit needs (cluster_nginx(), loadtest.py's --processes); a number
    # takes that path whatever the limit, as --quick does to test it.
    cluster_nginx_workers: int | None = None
    cluster_client_processes: int | None = None


FULL = Scale(
    connection_counts=(1, 100, 1000),
    target_connections=100,
    echo_seconds=10,
    rounds=5,
    handshakes=2000,
    handshake_concurrency=50,
    # Beyond what each should hold: gthread admits 900 per worker; gevent 9,000.
    most_sockets={"gthread": 2500, "gevent": 12000},
    hold_seconds=10,
    memory_sockets={"gthread": 800, "gevent": 3000},
    memory_rounds=5,
    compressed_rounds=1,
    subscribers=1000,
    fanout_messages=5,
    warmup=200,
    large_subscribers=10000,
    large_messages=20,
    large_rounds=5,
    storm_sockets=10000,
    storm_rounds=5,
    storm_deadline=60,
    storm_backoff=None,
    cluster_sockets=20000,
    cluster_rounds=1,
)
QUICK = Scale(
    connection_counts=(10,),
    target_connections=10,
    echo_seconds=1,
    rounds=1,
    handshakes=40,
    handshake_concurrency=10,
    most_sockets={"gthread": 60, "gevent": 100},
    hold_seconds=1,
    memory_sockets={"gthread": 30, "gevent": 50},
    memory_rounds=1,
    compressed_rounds=0,
    subscribers=20,
    fanout_messages=2,
    warmup=10,
    large_subscribers=60,
    large_messages=3,
    large_rounds=1,
    storm_sockets=30,
    storm_rounds=1,
    storm_deadline=60,
    # The new gunicorn answers within seconds: the clients need not wait
    # longer than that to be back (as tests/test_storm.py runs it).
    storm_backoff=(0.2, 2),
    cluster_sockets=100,
    cluster_rounds=1,
    cluster_nginx_workers=2,
    cluster_client_processes=2,
)
# The measurements, in the order a run takes them; `--sections` picks some.
# The last three run for gevent only, the worker class they are targets of.
SECTIONS = ("echo", "capacity", "memory", "fanout", "fanout_large", "storm", "cluster")
GEVENT_ONLY = ("fanout_large", "storm", "cluster")
# --quick leaves out "capacity": it takes the same steps as "memory" (idle
# sockets on fresh servers, idle_sockets()), and the smoke test stays short.
QUICK_SECTIONS = tuple(name for name in SECTIONS if name != "capacity")


def say(message: str) -> None:
    stamp = datetime.datetime.now().strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- processes ---------------------------------------------------------------


class Service:
    """A server in a subprocess on a free loopback port, with its log."""

    def __init__(self, name: str, command, cwd: Path, env: dict, logs: Path):
        self.name = name
        self.port = free_port()
        self.log_path = logs / f"{name}-{self.port}.log"
        command = [str(part).replace("{port}", str(self.port)) for part in command]
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )
        self.pid = self.process.pid

    def wait_until_listening(self, path: str | None = None, seconds=60) -> "Service":
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log_path.read_text()}")
            try:
                if path is None:
                    socket.create_connection(("127.0.0.1", self.port), 1).close()
                    return self
                url = f"http://127.0.0.1:{self.port}{path}"
                if requests.get(url, timeout=2).status_code == 200:
                    return self
            except (OSError, requests.RequestException):
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer in {seconds} s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=45)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


class Stack(contextlib.ExitStack):
    """Servers started for one measurement, stopped when it ends."""

    def start(self, service):
        self.callback(service.stop)
        return service


# --- the bakes ---------------------------------------------------------------


@dataclass
class Bake:
    worker_class: str
    root: Path
    package: str
    # The environment variables its settings read.
    setting_names: tuple[str, ...] = ()

    @property
    def python(self) -> Path:
        return self.root / ".venv" / "bin" / "python"

    def bin(self, name: str) -> Path:
        return self.root / ".venv" / "bin" / name

    def environ(self, **settings: str) -> dict:
        """This environment without the bake's settings, plus `settings`."""
        environ = os.environ.items()
        kept = {k: v for k, v in environ if k not in self.setting_names}
        return {**kept, **settings}


def bake_all(classes: list[str], workdir: Path, reuse: bool = False) -> dict:
    """{worker class: its Bake}, each with its venv under `workdir`; with
    `reuse`, the ones an earlier run left there, when complete. cookiecutter
    runs one bake at a time; the venvs install side by side."""
    from cookiecutter.main import cookiecutter

    roots, installs = {}, []
    for worker_class in classes:
        made = (workdir / worker_class).glob("*/.venv/bin/gunicorn")
        made = [gunicorn.parents[2] for gunicorn in made]
        if reuse and made:
            roots[worker_class] = made[0]
            continue
        say(f"baking and installing worker_class={worker_class}")
        answers = {"worker_class": worker_class, "broadcast": "redis", "ci": "none"}
        roots[worker_class] = Path(
            cookiecutter(
                str(TEMPLATE),
                no_input=True,
                output_dir=str(workdir / worker_class),
                extra_context=answers,
                overwrite_if_exists=reuse,
            )
        )
        installs.append(roots[worker_class])
    with concurrent.futures.ThreadPoolExecutor() as pool:
        list(pool.map(install_venv, installs))
    return {
        worker_class: found_bake(worker_class, roots[worker_class])
        for worker_class in classes
    }


def found_bake(worker_class: str, root: Path) -> Bake:
    (package,) = [path.parent.name for path in (root / "src").glob("*/__init__.py")]
    baked = Bake(worker_class, root, package)
    # The bake's own Settings (pydantic-settings) name its variables.
    script = f"from {package}.config import Settings; print(*Settings.model_fields)"
    baked.setting_names = tuple(run([baked.python, "-c", script]).stdout.split())
    return baked


def bake(worker_class: str, workdir: Path) -> Bake:
    """One bake of `worker_class` with its venv under `workdir`."""
    return bake_all([worker_class], workdir)[worker_class]


def install_venv(root: Path) -> None:
    venv = root / ".venv"
    if shutil.which("uv"):
        run(["uv", "venv", "-q", "-p", sys.executable, str(venv)])
        install = ["uv", "pip", "install", "-q", "--python", str(venv / "bin/python")]
    else:
        run([sys.executable, "-m", "venv", str(venv)])
        install = [str(venv / "bin/python"), "-m", "pip", "install", "-q"]
    run([*install, "-e", f"{root}[dev]"])


def run(command, **options) -> subprocess.CompletedProcess:
    options.setdefault("timeout", 900)
    result = subprocess.run(
        [str(part) for part in command], capture_output=True, text=True, **options
    )
    if result.returncode != 0:
        raise RuntimeError(f"{command[0]} failed:\n{result.stdout}{result.stderr}")
    return result


def service_settings(database_url: str, redis_url: str) -> dict:
    """The service's settings wherever the benchmarks start it: in production,
    behind one proxy, with the run's worker sizes."""
    return {
        "APP_ENV": "production",
        "SECRET_KEY": secrets.token_urlsafe(48),
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "TRUSTED_PROXY_COUNT": "1",
        "WEB_CONCURRENCY": str(WORKERS),
        "GUNICORN_THREADS": str(THREADS),
        "GUNICORN_WORKER_CONNECTIONS": str(WORKER_CONNECTIONS),
        # Every socket of a run is the one user's, the fan-out's publisher
        # sends as fast as it can, and every run of the client asks for a
        # token: lift those limits.
        "WS_MAX_SOCKETS_PER_USER": "1000000",
        "WS_MAX_MESSAGES_PER_SECOND": "1000000",
        "AUTH_LIMIT_PER_ADDRESS": "1000000/minute",
        "AUTH_LIMIT_PER_ACCOUNT": "1000000/minute",
    }


class Variant:
    """One bake with its database, user, and the servers to measure."""

    def __init__(self, bake: Bake, redis_url: str, workdir: Path):
        self.bake = bake
        self.worker_class = bake.worker_class
        self.logs = workdir / "logs"
        self.logs.mkdir(exist_ok=True)
        self.redis_url = redis_url
        database = workdir / f"{bake.worker_class}.db"
        self.settings = service_settings(f"sqlite:///{database}", redis_url)
        flask = [bake.bin("flask"), "--app", bake.package]
        env = bake.environ(**self.settings)
        run([*flask, "db", "upgrade"], cwd=bake.root, env=env)
        run(
            [*flask, "users", "create", USER, "--password", PASSWORD],
            cwd=bake.root,
            env=env,
        )
        self.nginx_class = nginx_class(bake)

    def worker_options(self) -> list[str]:
        if self.worker_class == "gthread":
            return ["-k", "gthread", "--threads", str(THREADS)]
        return ["-k", "gevent", "--worker-connections", str(WORKER_CONNECTIONS)]

    def baseline(self) -> Service:
        command = [
            self.bake.bin("gunicorn"),
            *self.worker_options(),
            *("--workers", WORKERS, "--timeout", TIMEOUT, "--keep-alive", KEEPALIVE),
            *("--access-logfile", "-", "--no-control-socket"),
            *("--bind", "127.0.0.1:{port}", "baseline_app:app"),
        ]
        env = self.bake.environ(REDIS_URL=self.redis_url)
        service = Service(
            f"baseline-{self.worker_class}", command, BENCHMARKS, env, self.logs
        )
        return service.wait_until_listening()

    def app(self, compression: str = "off") -> Service:
        command = [
            self.bake.bin("gunicorn"),
            *("-c", "gunicorn.conf.py", "--bind", "127.0.0.1:{port}"),
        ]
        env = self.bake.environ(**self.settings, WS_COMPRESSION=compression)
        service = Service(
            f"app-{self.worker_class}", command, self.bake.root, env, self.logs
        )
        return service.wait_until_listening("/healthz")

    def nginx(
        self,
        *apps: Service,
        worker_connections: int | None = None,
        worker_processes: int | None = None,
    ):
        """The generated nginx in front of `apps` (its upstream names each);
        with `worker_processes`, that many workers, each with a listening
        socket of its own (reuseport), so that they share the sockets evenly."""
        prefix = Path(tempfile.mkdtemp(prefix="nginx-", dir=self.logs))
        kind = self.nginx_class
        changed = {}
        if worker_connections:
            changed["worker_connections"] = worker_connections
        if worker_processes:
            changed["worker_processes"] = worker_processes
        if changed:
            kind = type("MoreNginx", (kind,), changed)
        # nginx's own limit on /auth/ too, for the same reason.
        return kind(
            prefix,
            [f"127.0.0.1:{app.port}" for app in apps],
            NGINX_AUTH_RATE="1000r/s",
            NGINX_AUTH_BURST="100000",
        ).start()


def bake_nginx_module(root: Path, worker_class: str):
    """A bake's own tests/nginx.py, loaded as a module of the bake's tests
    package, under a name of its own, for its import of tests/processes.py
    (which needs pytest)."""
    package = f"bake_tests_{worker_class}"
    tests = root / "tests"
    spec = importlib.util.spec_from_file_location(
        package, tests / "__init__.py", submodule_search_locations=[str(tests)]
    )
    sys.modules[package] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sys.modules[package])
    return importlib.import_module(f"{package}.nginx")


def nginx_class(bake: Bake):
    """The bake's own tests/nginx.py `Nginx`, with worker_connections raised."""
    module = bake_nginx_module(bake.root, bake.worker_class)

    class RaisedNginx(module.Nginx):
        worker_connections = NGINX_WORKER_CONNECTIONS
        # None: the generated `auto`, one per core.
        worker_processes: int | None = None

        def _main_config(self) -> str:
            text = super()._main_config()
            if self.worker_processes:
                text = module.replace_once(
                    text,
                    r"^worker_processes\s+\w+;",
                    f"worker_processes {self.worker_processes};",
                )
            text = module.replace_once(
                text,
                r"worker_connections\s+\d+;",
                f"worker_connections {self.worker_connections};",
            )
            return module.replace_once(
                text,
                r"worker_rlimit_nofile\s+\d+;",
                f"worker_rlimit_nofile {nginx_descriptors(self.worker_connections)};",
            )

        def _adjust(self, name: str, text: str, upstreams) -> str:
            text = super()._adjust(name, text, upstreams)
            if name != "default.conf" or not self.worker_processes:
                return text
            # One accept queue per worker: the kernel spreads the
            # connections among them by their addresses.
            return module.replace_once(
                text,
                rf"^[ \t]*listen\s+127\.0\.0\.1:{self.port}(?=[\s;])",
                f"    listen 127.0.0.1:{self.port} reuseport",
            )

        @property
        def pid(self) -> int:
            return self.process.pid

    return RaisedNginx


# --- measurements ------------------------------------------------------------


def metrics_url(app: Service) -> str:
    """The service's GET /metrics, from gunicorn itself: nginx refuses it."""
    return f"http://127.0.0.1:{app.port}/metrics"


def loadtest(variant: Variant, url: str, *, authenticated: bool, **options) -> dict:
    """Run benchmarks/loadtest.py with the bake's python; its JSON report.
    Options are its flags; a list repeats the flag."""
    report_path = variant.logs / f"loadtest-{secrets.token_hex(4)}.json"
    command = [
        variant.bake.python,
        BENCHMARKS / "loadtest.py",
        url,
        *("--json", report_path, "--quiet"),
    ]
    if authenticated:
        command += ["--user", USER]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            command.append(flag)
        elif isinstance(value, list):
            for each in value:
                command += [flag, each]
        elif value not in (None, False):
            command += [flag, value]
    bound = options["connections"] / options.get("rate", 500) + options["hold"] + 300
    result = subprocess.run(
        [str(part) for part in command],
        capture_output=True,
        text=True,
        timeout=bound,
        env={**os.environ, "LOADTEST_PASSWORD": PASSWORD},
    )
    if not report_path.exists():
        raise RuntimeError(f"loadtest failed:\n{result.stdout}{result.stderr}")
    return json.loads(report_path.read_text())


def median_round(reports: list[dict], key) -> dict:
    """The report of the round whose `key` is the median (the lower middle)."""
    ranked = sorted(reports, key=lambda report: key(report) or 0)
    return ranked[(len(ranked) - 1) // 2]


def measure_echo(variant: Variant, scale: Scale) -> dict:
    """Round trips per second and latency at each connection count, and
    handshakes per second; the targets on the same servers. The baseline
    behind the generated nginx takes its turn at `target_connections` and
    for handshakes only: the cost of nginx alone, which the service's figure
    through nginx pays too.

    The targets take turns, count by count and then handshakes, for
    `rounds` rounds: a burst of other work on the machine moves all of them
    alike or shows as a range rather than as a difference. Each row keeps
    every round's rate in the order of the rounds, so that each round's
    ratio to the baseline's can be taken (report.py), and the report of the
    round with the median rate."""
    echo: dict[tuple[str, int], list[dict]] = {}
    handshakes: dict[str, list[dict]] = {}
    with Stack() as stack:
        baseline = stack.start(variant.baseline())
        app = stack.start(variant.app())
        nginx = stack.start(variant.nginx(app))
        baseline_nginx = stack.start(variant.nginx(baseline))
        targets = [
            ("baseline", f"ws://127.0.0.1:{baseline.port}/echo", baseline, None),
            ("app", f"ws://127.0.0.1:{app.port}/ws/echo", app, None),
            ("nginx", f"ws://127.0.0.1:{nginx.port}/ws/echo", app, nginx),
            (
                "baseline_nginx",
                f"ws://127.0.0.1:{baseline_nginx.port}/ws/echo",
                baseline,
                baseline_nginx,
            ),
        ]
        for number in range(1, scale.rounds + 1):
            for count in scale.connection_counts:
                say(
                    f"{variant.worker_class}: echo, {count} connections, "
                    f"round {number} of {scale.rounds}"
                )
                for target, url, server, proxy in targets:
                    if target == "baseline_nginx" and count != scale.target_connections:
                        continue
                    report = loadtest(
                        variant,
                        url,
                        authenticated=not target.startswith("baseline"),
                        connections=count,
                        hold=scale.echo_seconds,
                        traffic="echo",
                        compression="off",
                        rate=2000,
                        server_pid=server.pid,
                        proxy_pid=proxy.pid if proxy else None,
                    )
                    echo.setdefault((target, count), []).append(report)
            say(
                f"{variant.worker_class}: {scale.handshakes} handshakes, "
                f"round {number} of {scale.rounds}"
            )
            for target, url, server, proxy in targets:
                report = loadtest(
                    variant,
                    url,
                    authenticated=not target.startswith("baseline"),
                    handshakes=True,
                    connections=scale.handshakes,
                    concurrency=scale.handshake_concurrency,
                    hold=0,
                    server_pid=server.pid,
                    proxy_pid=proxy.pid if proxy else None,
                )
                handshakes.setdefault(target, []).append(report)
    echo_rows = []
    for (target, count), reports in echo.items():
        rate = lambda r: r.get("round_trips_per_second")  # noqa: E731
        echo_rows.append(
            {
                "target": target,
                "connections": count,
                "report": median_round(reports, rate),
                # In the order of the rounds: report.py pairs them.
                "rates": [rate(r) or 0 for r in reports],
                "round_order": True,
            }
        )
    handshake_rows = []
    for target, reports in handshakes.items():
        rate = lambda r: r.get("handshakes_per_second")  # noqa: E731
        handshake_rows.append(
            {
                "target": target,
                "report": median_round(reports, rate),
                "rates": [rate(r) or 0 for r in reports],
                "cpu_ms": [cpu_per_handshake(r) for r in reports],
            }
        )
    return {"echo": echo_rows, "handshakes": handshake_rows}


def cpu_per_handshake(report: dict) -> float | None:
    """CPU ms per handshake of gunicorn and nginx together, when measured."""
    groups = [report.get(name) for name in ("server", "proxy") if name in report]
    values = [group.get("cpu_ms_per_handshake") for group in groups]
    if not values or None in values:
        return None
    return round(sum(values), 3)


def measure_capacity(variant: Variant, scale: Scale) -> list[dict]:
    """The most idle sockets held with no error (permessage-deflate off), and
    memory per socket, once, on a freshly started server each."""
    rows = []
    most = scale.most_sockets[variant.worker_class]
    for target in ("baseline", "nginx"):
        say(f"{variant.worker_class}: most sockets, {target}")
        report = idle_sockets(variant, scale, target, "off", most)
        rows.append(
            {"target": target, "compression": "off", "tried": most, "report": report}
        )
    return rows


def idle_sockets(
    variant: Variant, scale: Scale, target: str, compression: str, count: int
) -> dict:
    """`count` idle sockets on a freshly started server (memory freed by
    earlier sockets stays in it), until the first failure."""
    with Stack() as stack:
        if target == "baseline":
            server = stack.start(variant.baseline())
            url, proxy = f"ws://127.0.0.1:{server.port}/echo", None
            scraped = None  # it has no /metrics
        else:
            server = stack.start(variant.app(compression))
            proxy = stack.start(variant.nginx(server))
            url = f"ws://127.0.0.1:{proxy.port}/ws/echo"
            scraped = metrics_url(server)
        return loadtest(
            variant,
            url,
            authenticated=target != "baseline",
            connections=count,
            hold=scale.hold_seconds,
            compression=compression,
            rate=1000,
            stop_on_failure=True,
            warmup=scale.warmup,
            server_pid=server.pid,
            proxy_pid=proxy.pid if proxy else None,
            metrics_url=scraped,
        )


def measure_memory(variant: Variant, scale: Scale) -> list[dict]:
    """Memory per idle socket, the baseline and the service via nginx taking
    turns on fresh servers, `memory_rounds` rounds with permessage-deflate
    off and `compressed_rounds` with it on; every round's figure kept."""
    count = scale.memory_sockets[variant.worker_class]
    rows = []
    for compression, rounds in (
        ("off", scale.memory_rounds),
        ("on", scale.compressed_rounds),
    ):
        if not rounds:
            continue
        reports: dict[str, list[dict]] = {"baseline": [], "nginx": []}
        for number in range(1, rounds + 1):
            say(
                f"{variant.worker_class}: memory of {count} sockets, deflate "
                f"{compression}, round {number} of {rounds}"
            )
            for target in reports:
                reports[target].append(
                    idle_sockets(variant, scale, target, compression, count)
                )
        for target, measured in reports.items():
            per_socket = [socket_bytes(r, "server") for r in measured]
            rows.append(
                {
                    "target": target,
                    "compression": compression,
                    "sockets": count,
                    "report": median_round(
                        measured, lambda r: socket_bytes(r, "server")
                    ),
                    # In the order of the rounds, bytes per socket.
                    "per_socket_bytes": per_socket,
                    "proxy_per_socket_bytes": [
                        socket_bytes(r, "proxy") for r in measured
                    ],
                    "held": [r.get("held", 0) for r in measured],
                }
            )
    return rows


def socket_bytes(report: dict, group: str) -> int | None:
    return report.get(group, {}).get("per_socket_bytes")


def fanout(
    variant: Variant, url: str, server: Service, token, subscribers, messages
) -> dict:
    """Run benchmarks/fanout.py with the bake's python; its JSON report."""
    report_path = variant.logs / f"fanout-{secrets.token_hex(4)}.json"
    command = [
        variant.bake.python,
        BENCHMARKS / "fanout.py",
        url,
        *("-n", subscribers, "--messages", messages),
        *("--server-pid", server.pid, "--server-port", server.port),
        *("--json", report_path),
    ]
    if token:
        command += ["--token", token, "--metrics-url", metrics_url(server)]
    result = subprocess.run(
        [str(part) for part in command], capture_output=True, text=True, timeout=900
    )
    if not report_path.exists():
        raise RuntimeError(f"fanout failed:\n{result.stdout}{result.stderr}")
    return json.loads(report_path.read_text())


def service_token(proxy) -> str:
    return requests.post(
        f"{proxy.url}/auth/token", auth=(USER, PASSWORD), timeout=10
    ).json()["token"]


def measure_fanout(variant: Variant, scale: Scale) -> list[dict]:
    rows = []
    for target in ("baseline", "nginx"):
        say(f"{variant.worker_class}: fan-out, {target}, {scale.subscribers} sockets")
        with Stack() as stack:
            if target == "baseline":
                server = stack.start(variant.baseline())
                url, token = f"ws://127.0.0.1:{server.port}/chat", None
            else:
                server = stack.start(variant.app())
                proxy = stack.start(variant.nginx(server))
                url, token = (
                    f"ws://127.0.0.1:{proxy.port}/ws/chat",
                    service_token(proxy),
                )
            report = fanout(
                variant, url, server, token, scale.subscribers, scale.fanout_messages
            )
        rows.append({"target": target, "report": report})
    return rows


def measure_fanout_large(variant: Variant, scale: Scale) -> list[dict]:
    """The chat to `large_subscribers` sockets through nginx, two workers and
    Redis, on fresh servers each round (how the sockets fall on the two
    workers differs from one round to the next)."""
    rows = []
    for number in range(1, scale.large_rounds + 1):
        say(
            f"{variant.worker_class}: fan-out to {scale.large_subscribers} "
            f"subscribers, round {number} of {scale.large_rounds}"
        )
        with Stack() as stack:
            server = stack.start(variant.app())
            proxy = stack.start(variant.nginx(server))
            url = f"ws://127.0.0.1:{proxy.port}/ws/chat"
            report = fanout(
                variant,
                url,
                server,
                service_token(proxy),
                scale.large_subscribers,
                scale.large_messages,
            )
        rows.append({"round": number, "report": report})
    return rows


# What run.py reads of storm.py's --json report, top-level fields only (its
# internals change on their own): whether every client was back, how soon,
# and what failed on the way.
STORM_FIELDS = (
    "sockets",
    "opened",
    "open_failures",
    "all_back",
    "all_back_seconds",
    "back",
    "failed",
    "failed_by_reason",
    "deadline_seconds",
    "close_codes",
    "all_1001",
    "back_seconds",
    "attempts",
    "failed_attempts",
    "failed_attempts_by_reason",
    "peak_handshakes_per_second",
    "client_cpu_share",
    "listen_overflows",
    "load_before",
    "load_after",
)


def measure_storm(variant: Variant, scale: Scale) -> list[dict]:
    """benchmarks/storm.py on the bake, `storm_rounds` times: N sockets
    through nginx, gunicorn restarted as a deploy does, every client back.
    storm.py starts its own servers (as run.py does) and redis-server."""
    rows = []
    for number in range(1, scale.storm_rounds + 1):
        say(
            f"{variant.worker_class}: reconnect storm of {scale.storm_sockets} "
            f"sockets, round {number} of {scale.storm_rounds}"
        )
        report_path = variant.logs / f"storm-{secrets.token_hex(4)}.json"
        command = [
            variant.bake.python,
            BENCHMARKS / "storm.py",
            variant.bake.root,
            *("-n", scale.storm_sockets, "--deadline", scale.storm_deadline),
            *("--json", report_path, "--quiet"),
        ]
        if scale.storm_backoff:
            base, cap = scale.storm_backoff
            command += ["--base", base, "--cap", cap]
        status, output = run_group(
            command, timeout=scale.storm_sockets / 100 + scale.storm_deadline + 300
        )
        if not report_path.exists():
            # The round counts as failed; the next one may still measure.
            say(f"storm.py wrote no report ({status}): {output[-500:]}")
            rows.append(
                {
                    "round": number,
                    "exit_status": status,
                    "error": output[-3000:],
                    "report": {},
                }
            )
            continue
        report = json.loads(report_path.read_text())
        rows.append(
            {
                "round": number,
                "exit_status": status,
                "report": {k: report[k] for k in STORM_FIELDS if k in report},
            }
        )
    return rows


def run_group(command, timeout: float) -> tuple[int | str, str]:
    """Run `command` in a process group of its own, from benchmarks/; its
    exit status and output. Past `timeout` the whole group is killed, the
    servers it started with it, and the status is "timed out"."""
    process = subprocess.Popen(
        [str(part) for part in command],
        cwd=BENCHMARKS,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
        return process.returncode, output
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        return f"timed out after {timeout:.0f} s", output


def cluster_nginx(count: int, workers: int | None = None) -> dict:
    """nginx's settings for `count` sockets: two connections each. Where one
    worker may hold them all, the generated worker count, and workers that
    may not share evenly; else (or given `workers`) as many workers as the
    open-file limit needs, each with its own listening socket so that they
    do share evenly (a quarter spare for the unevenness of that share)."""
    spare = 1024
    _, limit = resource.getrlimit(resource.RLIMIT_NOFILE)
    unlimited = limit == resource.RLIM_INFINITY
    if not workers and (unlimited or 2 * count + spare <= limit):
        return {"worker_connections": 2 * count + spare}
    if unlimited:
        return {"worker_connections": 2 * count + spare, "worker_processes": workers}
    needed = math.ceil(2 * count * 1.25 / (limit - spare))
    return {
        "worker_connections": min(2 * count + spare, limit - spare),
        "worker_processes": max(workers or 0, needed),
    }


def measure_cluster(variant: Variant, scale: Scale) -> list[dict]:
    """`cluster_sockets` idle sockets through one nginx whose upstream names
    two gunicorns (each its own master and two workers, sharing the run's
    redis-server), until the first failure; each instance's count from its
    /metrics, memory from /proc."""
    rows = []
    count = scale.cluster_sockets
    for number in range(1, scale.cluster_rounds + 1):
        say(
            f"{variant.worker_class}: {count} sockets on two instances, "
            f"round {number} of {scale.cluster_rounds}"
        )
        with Stack() as stack:
            first = stack.start(variant.app())
            second = stack.start(variant.app())
            settings = cluster_nginx(count, scale.cluster_nginx_workers)
            proxy = stack.start(variant.nginx(first, second, **settings))
            report = loadtest(
                variant,
                f"ws://127.0.0.1:{proxy.port}/ws/echo",
                authenticated=True,
                connections=count,
                hold=scale.hold_seconds,
                compression="off",
                rate=1000,
                stop_on_failure=True,
                warmup=scale.warmup,
                server_pid=[first.pid, second.pid],
                proxy_pid=proxy.pid,
                metrics_url=[metrics_url(first), metrics_url(second)],
                processes=scale.cluster_client_processes,
            )
        rows.append(
            {"round": number, "tried": count, "nginx": settings, "report": report}
        )
    return rows


# --- the machine -------------------------------------------------------------


def load_average() -> float:
    return os.getloadavg()[0]


def busy_cpu_seconds() -> tuple[float, float]:
    """(CPU seconds the whole machine has been busy, of which the run's: this
    process, the children it has waited for, and every process it started
    that still runs, with the children those have waited for), to tell
    others' share of a run or of one section of it."""
    tick = os.sysconf("SC_CLK_TCK")
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    # user nice system idle iowait irq softirq steal: all but idle and iowait.
    ticks = [int(value) for value in fields[:8]]
    busy = (sum(ticks) - ticks[3] - ticks[4]) / tick
    own = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        own += usage.ru_utime + usage.ru_stime
    # The run's live processes (the redis-server, a server still running).
    parents, used = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # it ended while we looked
            continue
        parents[int(entry.name)] = int(stat[1])
        # utime stime cutime cstime
        used[int(entry.name)] = sum(int(value) for value in stat[11:15]) / tick
    ours = {os.getpid()}
    for _ in range(8):
        more = {pid for pid, parent in parents.items() if parent in ours} - ours
        if not more:
            break
        ours |= more
    own += sum(used[pid] for pid in ours - {os.getpid()})
    return busy, own


def machine() -> dict:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) * 1024
    system = platform.platform()
    with contextlib.suppress(OSError):
        release = Path("/etc/os-release").read_text()
        match = re.search(r'^PRETTY_NAME="?([^"\n]+)', release, re.M)
        if match:
            system = f"{match.group(1)}, Linux {platform.release()}"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(memory / 2**30, 1),
        "system": system,
    }


def find_nginx() -> str | None:
    """Debian installs nginx in /usr/sbin, off a user's PATH."""
    return shutil.which("nginx") or shutil.which(
        "nginx", path="/usr/sbin:/usr/local/sbin"
    )


def versions(bake: Bake, nginx_binary: str) -> dict:
    packages = [
        "flask",
        "flask-sock",
        "simple-websocket",
        "gunicorn",
        "gevent",
        "websockets",
        "redis",
    ]
    script = (
        "import importlib.metadata as m, json, platform\n"
        "found = {'python': platform.python_version()}\n"
        f"for name in {packages!r}:\n"
        "    try:\n"
        "        found[name] = m.version(name)\n"
        "    except m.PackageNotFoundError:\n"
        "        pass\n"
        "print(json.dumps(found))\n"
    )
    found = json.loads(run([bake.python, "-c", script]).stdout)
    nginx = run([nginx_binary, "-v"]).stderr.strip().split("/")[-1]
    redis = run(["redis-server", "--version"]).stdout.split()[2].removeprefix("v=")
    return {**found, "nginx": nginx, "redis-server": redis}


def template_commit() -> str:
    try:
        commit = run(["git", "-C", TEMPLATE, "rev-parse", "--short", "HEAD"]).stdout
        dirty = run(["git", "-C", TEMPLATE, "status", "--porcelain"]).stdout
    except (RuntimeError, OSError):
        return "unknown"
    return commit.strip() + (" with uncommitted changes" if dirty.strip() else "")


# --- the command -------------------------------------------------------------


def start_redis(workdir: Path) -> Service:
    command = ["redis-server", "--bind", "127.0.0.1", "--port", "{port}"]
    command += ["--save", "", "--appendonly", "no", "--maxclients", "20000"]
    return Service(
        "redis", command, workdir, dict(os.environ), workdir
    ).wait_until_listening()


SOMAXCONN = Path("/proc/sys/net/core/somaxconn")
# What the generated docs/capacity.md tells a host to set ("Accept queue").
WANTED_SOMAXCONN = 65535


def raise_somaxconn() -> int | None:
    """Raise net.core.somaxconn, the kernel's cap on gunicorn's accept queue,
    to what the generated docs/capacity.md says, when this process may (as
    root); the value before, for restore_somaxconn, or None when unchanged.
    Below a storm's size the queue drops handshakes, and the clients wait
    for TCP's retries instead of the service's work."""
    try:
        before = int(SOMAXCONN.read_text())
        if before < WANTED_SOMAXCONN:
            SOMAXCONN.write_text(str(WANTED_SOMAXCONN))
            return before
    except (OSError, ValueError):
        pass
    return None


def restore_somaxconn(before: int | None) -> None:
    if before is not None:
        with contextlib.suppress(OSError):
            SOMAXCONN.write_text(str(before))


def somaxconn() -> int | None:
    try:
        return int(SOMAXCONN.read_text())
    except (OSError, ValueError):
        return None


def raise_open_file_limit() -> None:
    """Up to the hard limit, for this process and the servers it starts."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small numbers")
    parser.add_argument("--output-dir", type=Path, help="default: benchmarks/")
    parser.add_argument(
        "--worker-classes", default=",".join(WORKER_CLASSES), help="gthread,gevent"
    )
    parser.add_argument(
        "--sections",
        help=f"which measurements, of {','.join(SECTIONS)} "
        f"({', '.join(GEVENT_ONLY)}: gevent only); default: all "
        "(--quick: all but capacity)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="change one number of the scale, e.g. large_subscribers=3000 "
        "(a dict such as memory_sockets takes JSON)",
    )
    parser.add_argument(
        "--bakes",
        type=Path,
        help="bake into this folder and reuse the bakes an earlier run left there",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    return parser.parse_args()


def chosen_scale(arguments: argparse.Namespace) -> Scale:
    scale = QUICK if arguments.quick else FULL
    changes = {}
    for setting in arguments.set:
        name, _, text = setting.partition("=")
        if name not in Scale.__dataclass_fields__:
            sys.exit(f"error: --set {setting}: no such number in the scale")
        value = json.loads(text)
        changes[name] = tuple(value) if isinstance(value, list) else value
    return dataclasses.replace(scale, **changes)


class Sections:
    """Runs each measurement, records how long it took and the CPU that
    other work on the machine used meanwhile, and keeps going past one that
    fails (a full run is long): its error is recorded and the run exits 1."""

    def __init__(self, results: dict):
        self.results = results
        results.setdefault("sections", [])
        results.setdefault("errors", [])

    def run(self, worker_class: str, name: str, measure) -> None:
        say(f"{worker_class}: {name}")
        load_before = load_average()
        busy_before, own_before = busy_cpu_seconds()
        started = time.monotonic()
        try:
            measured = measure()
        except Exception as error:  # recorded, and the run goes on
            say(f"{worker_class}: {name} failed: {error}")
            self.results["errors"].append(
                {"worker_class": worker_class, "section": name, "error": str(error)}
            )
            measured = None
        seconds = time.monotonic() - started
        busy_after, own_after = busy_cpu_seconds()
        others = (busy_after - busy_before) - (own_after - own_before)
        self.results["sections"].append(
            {
                "worker_class": worker_class,
                "section": name,
                "seconds": round(seconds, 1),
                "others_cpu_share": round(
                    max(0.0, others / (seconds * os.cpu_count())), 3
                ),
                "load_before": load_before,
                "load_after": load_average(),
            }
        )
        if measured is None:
            return
        variant = self.results["variants"].setdefault(worker_class, {})
        if isinstance(measured, dict) and name == "echo":
            variant.update(measured)  # "echo" and "handshakes"
        else:
            variant[name] = measured


def main() -> int:
    arguments = parse_arguments()
    output = arguments.output_dir or (
        Path(tempfile.mkdtemp(prefix="benchmarks-quick-"))
        if arguments.quick
        else BENCHMARKS
    )
    output.mkdir(parents=True, exist_ok=True)
    if not shutil.which("redis-server") or not find_nginx():
        sys.exit(
            "error: redis-server and nginx are needed (Debian: redis-server nginx)"
        )
    raise_open_file_limit()
    somaxconn_before = raise_somaxconn()
    scale = chosen_scale(arguments)
    classes = [c for c in arguments.worker_classes.split(",") if c]
    default = QUICK_SECTIONS if arguments.quick else SECTIONS
    sections = [name for name in (arguments.sections or "").split(",") if name]
    sections = sections or list(default)
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        sys.exit(f"error: no such section: {', '.join(sorted(unknown))}")
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="benchmarks-"))
    command = "python benchmarks/run.py" + (" --quick" if arguments.quick else "")
    if arguments.sections:
        command += f" --sections {arguments.sections}"
    command += "".join(f" --set {setting}" for setting in arguments.set)
    results = {
        "command": command,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": template_commit(),
        "quick": arguments.quick,
        "machine": {**machine(), "somaxconn": somaxconn()},
        "scale": dataclasses.asdict(scale),
        "servers": {
            "workers": WORKERS,
            "threads": THREADS,
            "worker_connections": WORKER_CONNECTIONS,
            "timeout": TIMEOUT,
            "keepalive": KEEPALIVE,
            "nginx_worker_connections": NGINX_WORKER_CONNECTIONS,
            "nginx_rlimit_nofile": nginx_descriptors(NGINX_WORKER_CONNECTIONS),
        },
        "load_before": load_average(),
        "variants": {},
    }
    say(f"working in {workdir}; load average {results['load_before']:.2f}")
    busy_before, own_before = busy_cpu_seconds()
    measures = {
        "echo": measure_echo,
        "capacity": measure_capacity,
        "memory": measure_memory,
        "fanout": measure_fanout,
        "fanout_large": measure_fanout_large,
        "storm": measure_storm,
        "cluster": measure_cluster,
    }
    runner = Sections(results)
    try:
        bakes = bake_all(
            classes, arguments.bakes or workdir, reuse=bool(arguments.bakes)
        )
        results["versions"] = versions(
            bakes.get("gevent", bakes[classes[0]]), find_nginx()
        )
        with Stack() as stack:
            redis = stack.start(start_redis(workdir))
            for worker_class in classes:
                variant = Variant(
                    bakes[worker_class], f"redis://127.0.0.1:{redis.port}/0", workdir
                )
                for name in sections:
                    if name in GEVENT_ONLY and worker_class != "gevent":
                        continue
                    measure = functools.partial(measures[name], variant, scale)
                    runner.run(worker_class, name, measure)
    finally:
        restore_somaxconn(somaxconn_before)
        if arguments.keep:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    results["load_after"] = load_average()
    busy_after, own_after = busy_cpu_seconds()
    elapsed = time.monotonic() - started
    others = (busy_after - busy_before) - (own_after - own_before)
    results["others_cpu_share"] = max(0.0, others / (elapsed * os.cpu_count()))
    results["minutes"] = (time.monotonic() - started) / 60
    (output / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    say(f"wrote {write_report(results, output)}")
    for error in results["errors"]:
        say(f"error in {error['worker_class']} {error['section']}: {error['error']}")
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
