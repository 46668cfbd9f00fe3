"""Benchmarks: the generated service against plain Flask-Sock, same machine, same run.

    python -m pip install -r benchmarks/requirements.txt
    python benchmarks/run.py           # every figure, about 20 minutes
    python benchmarks/run.py --quick   # the same steps with small numbers

It bakes the template twice (worker_class gthread and gevent, broadcast redis),
installs each bake into its own venv, starts a redis-server of its own on a
free port, and for each worker class measures, in one run:

- the baseline: benchmarks/baseline_app.py, Flask-Sock's tutorial echo app,
  under gunicorn with the same settings as the service, without nginx;
- the service straight from gunicorn ("app"), and through the generated nginx
  configuration run by the machine's nginx ("nginx").

Figures: echo round trips per second and p50/p99 latency at 1, 100 and 1,000
connections; the most sockets held with no error and the memory per socket,
with permessage-deflate on and off; chat fan-out time to 1,000 subscribers on
two workers. The clients are the generated project's own scripts/loadtest.py
and benchmarks/fanout.py. It writes BENCHMARKS.md, latency.png and
results.json to benchmarks/ (--quick: to a temporary folder, unless
--output-dir says otherwise). Only loopback addresses are used.
"""

import argparse
import contextlib
import datetime
import importlib.util
import json
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
# nginx: two connections per proxied socket; raised as the generated README
# says, so that nginx is never the limit being measured.
NGINX_WORKER_CONNECTIONS = 32768
NGINX_RLIMIT_NOFILE = 2 * NGINX_WORKER_CONNECTIONS
# The targets of issue 5.
TARGET_THROUGHPUT_RATIO = 0.8
TARGET_GEVENT_SOCKETS = 10_000
TARGET_IDLE_SOCKET_BYTES = 50 * 1024
# What each target is called in BENCHMARKS.md.
LABELS = {
    "baseline": "baseline",
    "app": "service, direct",
    "nginx": "service via nginx",
}


@dataclass(frozen=True)
class Scale:
    connection_counts: tuple[int, ...]
    echo_seconds: float
    echo_rounds: int
    most_sockets: dict[str, int]
    hold_seconds: float
    subscribers: int
    fanout_messages: int
    # Sockets opened and closed before memory is first measured.
    warmup: int


FULL = Scale(
    connection_counts=(1, 100, 1000),
    echo_seconds=10,
    echo_rounds=3,
    # Beyond what each should hold: gthread admits 900 per worker; gevent 9,000.
    most_sockets={"gthread": 2500, "gevent": 12000},
    hold_seconds=10,
    subscribers=1000,
    fanout_messages=5,
    warmup=200,
)
QUICK = Scale(
    connection_counts=(1, 10, 50),
    echo_seconds=1,
    echo_rounds=1,
    most_sockets={"gthread": 60, "gevent": 100},
    hold_seconds=1,
    subscribers=20,
    fanout_messages=2,
    warmup=10,
)


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

    @property
    def python(self) -> Path:
        return self.root / ".venv" / "bin" / "python"

    def bin(self, name: str) -> Path:
        return self.root / ".venv" / "bin" / name


def bake(worker_class: str, workdir: Path) -> Bake:
    from cookiecutter.main import cookiecutter

    answers = {"worker_class": worker_class, "broadcast": "redis", "ci": "none"}
    root = Path(
        cookiecutter(
            str(TEMPLATE),
            no_input=True,
            output_dir=str(workdir / worker_class),
            extra_context=answers,
        )
    )
    venv = root / ".venv"
    if shutil.which("uv"):
        run(["uv", "venv", "-q", "-p", sys.executable, str(venv)])
        install = ["uv", "pip", "install", "-q", "--python", str(venv / "bin/python")]
    else:
        run([sys.executable, "-m", "venv", str(venv)])
        install = [str(venv / "bin/python"), "-m", "pip", "install", "-q"]
    run([*install, "-e", f"{root}[dev]"])
    (package,) = [path.parent.name for path in (root / "src").glob("*/__init__.py")]
    return Bake(worker_class, root, package)


def run(command, **options) -> subprocess.CompletedProcess:
    options.setdefault("timeout", 900)
    result = subprocess.run(
        [str(part) for part in command], capture_output=True, text=True, **options
    )
    if result.returncode != 0:
        raise RuntimeError(f"{command[0]} failed:\n{result.stdout}{result.stderr}")
    return result


def clean_environ(**settings: str) -> dict:
    """This environment without the service's settings, plus `settings`."""
    config = TEMPLATE / "{{cookiecutter.project_slug}}" / "src"
    config = config / "{{cookiecutter.package_name}}" / "config.py"
    names = re.findall(r'env\.\w+\(\s*"([A-Z][A-Z0-9_]+)"', config.read_text())
    environ = {k: v for k, v in os.environ.items() if k not in names}
    return {**environ, **settings}


class Variant:
    """One bake with its database, user, and the servers to measure."""

    def __init__(self, bake: Bake, redis_url: str, workdir: Path):
        self.bake = bake
        self.worker_class = bake.worker_class
        self.logs = workdir / "logs"
        self.logs.mkdir(exist_ok=True)
        self.redis_url = redis_url
        self.settings = {
            "APP_ENV": "production",
            "SECRET_KEY": secrets.token_urlsafe(48),
            "DATABASE_URL": f"sqlite:///{workdir / f'{bake.worker_class}.db'}",
            "REDIS_URL": redis_url,
            "TRUSTED_PROXY_COUNT": "1",
            "WEB_CONCURRENCY": str(WORKERS),
            "GUNICORN_THREADS": str(THREADS),
            "GUNICORN_WORKER_CONNECTIONS": str(WORKER_CONNECTIONS),
            # Every socket of a run is the one user's, and the fan-out's
            # publisher sends as fast as it can: lift both limits.
            "WS_MAX_SOCKETS_PER_USER": "1000000",
            "WS_MAX_MESSAGES_PER_SECOND": "1000000",
        }
        flask = [bake.bin("flask"), "--app", bake.package]
        env = clean_environ(**self.settings)
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
        env = clean_environ(REDIS_URL=self.redis_url)
        service = Service(
            f"baseline-{self.worker_class}", command, BENCHMARKS, env, self.logs
        )
        return service.wait_until_listening()

    def app(self, compression: str = "off") -> Service:
        command = [
            self.bake.bin("gunicorn"),
            *("-c", "gunicorn.conf.py", "--bind", "127.0.0.1:{port}"),
        ]
        env = clean_environ(**self.settings, WS_COMPRESSION=compression)
        service = Service(
            f"app-{self.worker_class}", command, self.bake.root, env, self.logs
        )
        return service.wait_until_listening("/healthz")

    def nginx(self, app: Service):
        prefix = Path(tempfile.mkdtemp(prefix="nginx-", dir=self.logs))
        return self.nginx_class(prefix, [f"127.0.0.1:{app.port}"]).start()


def nginx_class(bake: Bake):
    """The bake's own tests/nginx.py `Nginx`, with worker_connections raised."""
    spec = importlib.util.spec_from_file_location(
        f"nginx_{bake.worker_class}", bake.root / "tests" / "nginx.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    class RaisedNginx(module.Nginx):
        def _main_config(self) -> str:
            text = super()._main_config()
            text = module.replace_once(
                text,
                r"worker_connections\s+\d+;",
                f"worker_connections {NGINX_WORKER_CONNECTIONS};",
            )
            return module.replace_once(
                text,
                r"worker_rlimit_nofile\s+\d+;",
                f"worker_rlimit_nofile {NGINX_RLIMIT_NOFILE};",
            )

        @property
        def pid(self) -> int:
            return self.process.pid

    return RaisedNginx


# --- measurements ------------------------------------------------------------


def loadtest(variant: Variant, url: str, *, authenticated: bool, **options) -> dict:
    """Run the bake's scripts/loadtest.py; its JSON report."""
    report = variant.logs / f"loadtest-{secrets.token_hex(4)}.json"
    command = [
        variant.bake.python,
        variant.bake.root / "scripts" / "loadtest.py",
        url,
        *("--json", report, "--quiet"),
    ]
    if authenticated:
        command += ["--user", USER]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            command.append(flag)
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
    if not report.exists():
        raise RuntimeError(f"loadtest failed:\n{result.stdout}{result.stderr}")
    return json.loads(report.read_text())


def measure_echo(variant: Variant, scale: Scale) -> list[dict]:
    """Round trips per second and latency at each connection count.

    The three targets run side by side and take turns, count by count, for
    `echo_rounds` rounds; each figure is from the round with the median
    throughput, so a burst of other work on the machine moves all of them
    alike or shows as a spread rather than as a difference."""
    rounds: dict[tuple[str, int], list[dict]] = {}
    with Stack() as stack:
        baseline = stack.start(variant.baseline())
        app = stack.start(variant.app())
        nginx = stack.start(variant.nginx(app))
        targets = [
            ("baseline", f"ws://127.0.0.1:{baseline.port}/echo", baseline, None),
            ("app", f"ws://127.0.0.1:{app.port}/ws/echo", app, None),
            ("nginx", f"ws://127.0.0.1:{nginx.port}/ws/echo", app, nginx),
        ]
        for number in range(1, scale.echo_rounds + 1):
            for count in scale.connection_counts:
                say(
                    f"{variant.worker_class}: echo, {count} connections, "
                    f"round {number} of {scale.echo_rounds}"
                )
                for target, url, server, proxy in targets:
                    report = loadtest(
                        variant,
                        url,
                        authenticated=target != "baseline",
                        connections=count,
                        hold=scale.echo_seconds,
                        traffic="echo",
                        compression="off",
                        rate=2000,
                        server_pid=server.pid,
                        proxy_pid=proxy.pid if proxy else None,
                    )
                    rounds.setdefault((target, count), []).append(report)
    rows = []
    for (target, count), reports in rounds.items():
        ranked = sorted(reports, key=lambda r: r.get("round_trips_per_second") or 0)
        rates = [r.get("round_trips_per_second") or 0 for r in ranked]
        rows.append(
            {
                "target": target,
                "connections": count,
                "report": ranked[len(ranked) // 2],
                "rates": rates,
            }
        )
    return rows


def measure_capacity(variant: Variant, scale: Scale) -> list[dict]:
    """The most idle sockets held with no error, and memory per socket, on a
    freshly started server each time (memory freed by sockets stays in it)."""
    rows = []
    most = scale.most_sockets[variant.worker_class]
    for compression in ("off", "on"):
        for target in ("baseline", "nginx"):
            say(f"{variant.worker_class}: sockets, {target}, deflate {compression}")
            with Stack() as stack:
                if target == "baseline":
                    server = stack.start(variant.baseline())
                    url, proxy = f"ws://127.0.0.1:{server.port}/echo", None
                else:
                    server = stack.start(variant.app(compression))
                    proxy = stack.start(variant.nginx(server))
                    url = f"ws://127.0.0.1:{proxy.port}/ws/echo"
                report = loadtest(
                    variant,
                    url,
                    authenticated=target != "baseline",
                    connections=most,
                    hold=scale.hold_seconds,
                    compression=compression,
                    rate=1000,
                    stop_on_failure=True,
                    warmup=scale.warmup,
                    server_pid=server.pid,
                    proxy_pid=proxy.pid if proxy else None,
                )
            rows.append(
                {
                    "target": target,
                    "compression": compression,
                    "tried": most,
                    "report": report,
                }
            )
    return rows


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
                url = f"ws://127.0.0.1:{proxy.port}/ws/chat"
                token = requests.post(
                    f"{proxy.url}/auth/token", auth=(USER, PASSWORD), timeout=10
                ).json()["token"]
            report_path = variant.logs / f"fanout-{secrets.token_hex(4)}.json"
            command = [
                variant.bake.python,
                BENCHMARKS / "fanout.py",
                variant.bake.root,
                url,
                *("-n", scale.subscribers, "--messages", scale.fanout_messages),
                *("--server-pid", server.pid, "--server-port", server.port),
                *("--json", report_path),
            ]
            if token:
                command += ["--token", token]
            result = subprocess.run(
                [str(part) for part in command],
                capture_output=True,
                text=True,
                timeout=600,
            )
            if not report_path.exists():
                raise RuntimeError(f"fanout failed:\n{result.stdout}{result.stderr}")
            report = json.loads(report_path.read_text())
        rows.append({"target": target, "report": report})
    return rows


# --- the machine -------------------------------------------------------------


def load_average() -> float:
    return os.getloadavg()[0]


def busy_cpu_seconds() -> tuple[float, float]:
    """(CPU seconds the whole machine has been busy, of which this process and
    the children it has waited for), to tell others' share of a run."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    # user nice system idle iowait irq softirq steal: all but idle and iowait.
    ticks = [int(value) for value in fields[:8]]
    busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
    own = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        own += usage.ru_utime + usage.ru_stime
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


# --- the report --------------------------------------------------------------


def spread(rates: list[float]) -> str:
    """The range over the rounds, when there were several."""
    if len(rates) < 2:
        return ""
    return f" ({min(rates):,.0f}–{max(rates):,.0f})"


def ratio(value, baseline) -> str:
    if value is None or not baseline:
        return "–"
    return f"×{value / baseline:.2f}"


def number(value, digits=0, unit="") -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}{unit}"


def held(report: dict) -> int:
    """Sockets held with no error: all of them, or those open at the first failure."""
    if report["failed"]:
        return report["open_at_first_failure"] or 0
    return report["held"]


def first_failure(report: dict) -> str:
    if not report["failures"]:
        return "none"
    return next(iter(report["failures"]))


def opening_rate(report: dict) -> float | None:
    seconds = report["ramp_seconds"]
    return report["opened"] / seconds if seconds else None


def kilobytes(report: dict, group="server"):
    per_socket = report.get(group, {}).get("per_socket_bytes")
    return None if per_socket is None else per_socket / 1024


def cpu(report: dict) -> str:
    parts = [f"client {report['client_cpu_share']:.0%}"]
    for group, label in (("server", "gunicorn"), ("proxy", "nginx")):
        if group in report and report[group]["cpu_share"] is not None:
            parts.append(f"{label} {report[group]['cpu_share']:.0%}")
        elif group in report:
            parts.append(f"{label} not measured (its processes changed)")
    return ", ".join(parts)


def echo_table(rows: list[dict]) -> list[str]:
    lines = [
        "| connections | target | round trips/s | vs baseline | p50 ms | vs baseline "
        "| p99 ms | vs baseline | CPU during the run (share of one core) |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    base = {r["connections"]: r["report"] for r in rows if r["target"] == "baseline"}
    for row in sorted(
        rows, key=lambda r: (r["connections"], r["target"] != "baseline")
    ):
        report, reference = row["report"], base.get(row["connections"], {})
        rate = report.get("round_trips_per_second")
        p50, p99 = report["traffic_ms"]["p50"], report["traffic_ms"]["p99"]
        base_p50 = reference.get("traffic_ms", {}).get("p50")
        base_p99 = reference.get("traffic_ms", {}).get("p99")
        failed = f" ({report['failed']} failed)" if report["failed"] else ""
        lines.append(
            f"| {row['connections']:,} | {LABELS[row['target']]}{failed} "
            f"| {number(rate)}{spread(row.get('rates', []))} "
            f"| {ratio(rate, reference.get('round_trips_per_second'))} "
            f"| {number(p50, 1)} | {ratio(p50, base_p50)} "
            f"| {number(p99, 1)} | {ratio(p99, base_p99)} "
            f"| {cpu(report)} |"
        )
    return lines


def capacity_table(rows: list[dict]) -> list[str]:
    lines = [
        "| permessage-deflate | target | tried | held with no error | vs baseline "
        "| first failure | opened per second | vs baseline "
        "| app memory per socket | vs baseline | nginx per socket |",
        "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        report = row["report"]
        reference = next(
            r["report"]
            for r in rows
            if r["target"] == "baseline" and r["compression"] == row["compression"]
        )
        lines.append(
            f"| {row['compression']} | {LABELS[row['target']]} | {row['tried']:,} "
            f"| {held(report):,} | {ratio(held(report), held(reference))} "
            f"| {first_failure(report)} "
            f"| {number(opening_rate(report))} "
            f"| {ratio(opening_rate(report), opening_rate(reference))} "
            f"| {number(kilobytes(report), 1, ' KB')} "
            f"| {ratio(kilobytes(report), kilobytes(reference))} "
            f"| {number(kilobytes(report, 'proxy'), 1, ' KB')} |"
        )
    return lines


def fanout_table(results: dict) -> list[str]:
    lines = [
        "| worker class | target | subscribers reached | per worker "
        "| time to reach all (median) | vs baseline | p50 arrival | vs baseline |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for worker_class, section in results["variants"].items():
        rows = section["fanout"]
        base = next(r["report"] for r in rows if r["target"] == "baseline")
        for row in rows:
            report = row["report"]
            reached = f"{report.get('reached_min', 0):,} of {report.get('asked', 0):,}"
            if report.get("error"):
                reached += f" (the sender's socket: {report['error']})"
            spread = " + ".join(str(n) for n in report.get("per_worker", [])) or "–"
            lines.append(
                f"| {worker_class} | {LABELS[row['target']]} | {reached} | {spread} "
                f"| {number(report.get('all_ms_median'), 1, ' ms')} "
                f"| {ratio(report.get('all_ms_median'), base.get('all_ms_median'))} "
                f"| {number(report.get('p50_ms_median'), 1, ' ms')} "
                f"| {ratio(report.get('p50_ms_median'), base.get('p50_ms_median'))} |"
            )
    return lines


def targets(results: dict) -> list[str]:
    lines = ["| target | measured | met |", "| --- | --- | --- |"]
    for worker_class, section in results["variants"].items():
        echo = section["echo"]
        at_100 = {
            r["target"]: r["report"].get("round_trips_per_second")
            for r in echo
            if r["connections"] == 100
        }
        if at_100.get("nginx") and at_100.get("baseline"):
            share = at_100["nginx"] / at_100["baseline"]
            lines.append(
                f"| {worker_class}: echo through nginx at 100 connections "
                f">= {TARGET_THROUGHPUT_RATIO} of the baseline | ×{share:.2f} "
                f"({at_100['nginx']:,.0f} vs {at_100['baseline']:,.0f} round trips/s) "
                f"| {'yes' if share >= TARGET_THROUGHPUT_RATIO else 'no'} |"
            )
        for row in section["capacity"]:
            if row["target"] != "nginx" or row["compression"] != "off":
                continue
            size = kilobytes(row["report"])
            if size is not None:
                lines.append(
                    f"| {worker_class}: memory per idle socket, deflate off, "
                    f"<= {TARGET_IDLE_SOCKET_BYTES // 1024} KB | {size:.1f} KB "
                    f"| {'yes' if size * 1024 <= TARGET_IDLE_SOCKET_BYTES else 'no'} |"
                )
            if worker_class == "gevent":
                count = held(row["report"])
                lines.append(
                    f"| gevent holds {TARGET_GEVENT_SOCKETS:,} sockets through nginx "
                    f"| {count:,} held with no error (of {row['tried']:,} tried) "
                    f"| {'yes' if count >= TARGET_GEVENT_SOCKETS else 'no'} |"
                )
    return lines


def write_chart(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = results["variants"]
    figure, axes = plt.subplots(
        1, len(variants), figsize=(4.5 * len(variants), 3.6), sharey=True, squeeze=False
    )
    colours = {"baseline": "#777777", "app": "#1f77b4", "nginx": "#d62728"}
    for axis, (worker_class, section) in zip(axes[0], variants.items(), strict=True):
        for target, colour in colours.items():
            rows = sorted(
                (r for r in section["echo"] if r["target"] == target),
                key=lambda r: r["connections"],
            )
            counts = [r["connections"] for r in rows]
            for quantile, style in (("p50", "-"), ("p99", "--")):
                axis.plot(
                    counts,
                    [r["report"]["traffic_ms"][quantile] for r in rows],
                    style,
                    marker="o",
                    color=colour,
                    label=f"{LABELS[target]} {quantile}",
                )
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_title(f"{worker_class}: echo latency")
        axis.set_xlabel("concurrent connections, each echoing")
        axis.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("round trip, ms")
    axes[0][-1].legend(fontsize=7, loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def write_markdown(results: dict, path: Path, chart_name: str) -> None:
    info = results["machine"]
    lines = [
        "# Benchmarks",
        "",
        "The generated service against a baseline, measured in one run on one "
        "machine. The baseline is Flask-Sock's tutorial echo app "
        "([baseline_app.py](baseline_app.py)) under gunicorn with the same "
        "settings, without nginx. **Service via nginx** is the generated "
        "service (`broadcast = redis`) behind the generated nginx "
        "configuration, the way it is deployed; **service, direct** is the "
        "same service straight from gunicorn, to tell nginx's share from the "
        "app's. Every figure has its ratio to the baseline's: above ×1 means "
        "more (round trips, sockets, memory) or slower (latency). The raw "
        "reports are in results.json; `python benchmarks/run.py --report-only "
        "benchmarks/results.json` writes this page and the chart again.",
        "",
        f"Command: `{results['command']}` · {results['date']} · template "
        f"{results['commit']} · {results['minutes']:.0f} minutes"
        + (
            " · **--quick: small numbers, a smoke test only**"
            if results["quick"]
            else ""
        ),
        "",
        "## Machine and versions",
        "",
        "| | |",
        "| --- | --- |",
        f"| CPU | {info['cpu']}, {info['cores']} cores |",
        f"| memory | {info['memory_gib']} GiB |",
        f"| system | {info['system']} |",
        f"| load average (1 min) | {results['load_before']:.2f} before the run |",
        *(
            [
                f"| other work | {results['others_cpu_share']:.0%} of the machine's "
                "CPU went to processes other than the run's during it |"
            ]
            if "others_cpu_share" in results
            else []
        ),
        "| versions | "
        + ", ".join(f"{k} {v}" for k, v in results["versions"].items())
        + " |",
        f"| gunicorn | {WORKERS} workers; gthread {THREADS} threads, gevent "
        f"{WORKER_CONNECTIONS:,} worker_connections (the service: "
        "`WEB_CONCURRENCY`, `GUNICORN_THREADS`, `GUNICORN_WORKER_CONNECTIONS`); "
        f"timeout {TIMEOUT} s, keep-alive {KEEPALIVE} s |",
        f"| nginx | the generated config, `worker_connections` "
        f"{NGINX_WORKER_CONNECTIONS:,} and `worker_rlimit_nofile` "
        f"{NGINX_RLIMIT_NOFILE:,} |",
        "| service | `APP_ENV=production`, SQLite, `broadcast = redis` with a "
        "redis-server of the run's own, access log and one log line per socket |",
        "| client | one Python process (scripts/loadtest.py, websockets' asyncio "
        "client) on the same machine; bearer token on every handshake to the service |",
        "",
        "The client, nginx and gunicorn share the same cores, so every figure is "
        "lower than on separate machines; the CPU column says who was busy. "
        "A load average above zero before the run means other work shared the "
        "machine too.",
        "",
        "## Targets",
        "",
        *targets(results),
        "",
    ]
    for worker_class, section in results["variants"].items():
        lines += [
            f"## {worker_class}",
            "",
            "### Echo round trips",
            "",
            f"Each connection sends 32 bytes and waits for them to come back, again "
            f"and again, for {results['scale']['echo_seconds']:g} s; "
            "permessage-deflate off. The three targets take turns, "
            f"{results['scale'].get('echo_rounds', 1)} rounds; each row is the round "
            "with the median throughput, the range over the rounds in brackets.",
            "",
            *echo_table(section["echo"]),
            "",
            "### Sockets held and memory",
            "",
            "Sockets opened at up to 1,000 per second, each checked with one echo, "
            f"held idle for {results['scale']['hold_seconds']:g} s and checked again, "
            "until the first failure or the number tried; a fresh server each time. "
            "Memory per socket is the growth of the resident memory of gunicorn "
            "(master and workers) divided by the sockets held; permessage-deflate "
            "on is offered the way browsers offer it.",
            "",
            *capacity_table(section["capacity"]),
            "",
        ]
    lines += [
        "## Chat fan-out",
        "",
        f"{results['scale']['subscribers']:,} chat subscribers on two workers and "
        "one sender; each message is timed from the send until it reaches each "
        f"subscriber, {results['scale']['fanout_messages']} messages. The service "
        "goes through nginx and its Redis hub (one subscription per worker); the "
        "baseline is the tutorial app with the obvious Redis version of a chat "
        "route (one subscription per socket, in baseline_app.py), without nginx. "
        "Per worker: connections each gunicorn worker held.",
        "",
        *fanout_table(results),
        "",
        "## Latency against connections",
        "",
        f"![echo latency against connection count]({chart_name})",
        "",
        "## What limits the numbers",
        "",
        *notes(results),
    ]
    path.write_text("\n".join(lines).rstrip() + "\n")


# --- the command -------------------------------------------------------------


def start_redis(workdir: Path) -> Service:
    command = ["redis-server", "--bind", "127.0.0.1", "--port", "{port}"]
    command += ["--save", "", "--appendonly", "no", "--maxclients", "20000"]
    return Service(
        "redis", command, workdir, dict(os.environ), workdir
    ).wait_until_listening()


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
        "--report-only",
        type=Path,
        metavar="RESULTS_JSON",
        help="write BENCHMARKS.md and the chart from an earlier results.json",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    return parser.parse_args()


def main() -> int:
    arguments = parse_arguments()
    output = arguments.output_dir or (
        Path(tempfile.mkdtemp(prefix="benchmarks-quick-"))
        if arguments.quick
        else BENCHMARKS
    )
    output.mkdir(parents=True, exist_ok=True)
    if arguments.report_only:
        results = json.loads(arguments.report_only.read_text())
        write_chart(results, output / "latency.png")
        write_markdown(results, output / "BENCHMARKS.md", "latency.png")
        return 0

    if not shutil.which("redis-server") or not find_nginx():
        sys.exit(
            "error: redis-server and nginx are needed (Debian: redis-server nginx)"
        )
    raise_open_file_limit()
    scale = QUICK if arguments.quick else FULL
    classes = [c for c in arguments.worker_classes.split(",") if c]
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="benchmarks-"))
    results = {
        "command": "python benchmarks/run.py" + (" --quick" if arguments.quick else ""),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": template_commit(),
        "quick": arguments.quick,
        "machine": machine(),
        "scale": scale.__dict__,
        "load_before": load_average(),
        "variants": {},
    }
    say(f"working in {workdir}; load average {results['load_before']:.2f}")
    busy_before, own_before = busy_cpu_seconds()
    try:
        bakes = {}
        for worker_class in classes:
            say(f"baking and installing worker_class={worker_class}")
            bakes[worker_class] = bake(worker_class, workdir)
        results["versions"] = versions(
            bakes.get("gevent", bakes[classes[0]]), find_nginx()
        )
        with Stack() as stack:
            redis = stack.start(start_redis(workdir))
            for worker_class in classes:
                variant = Variant(
                    bakes[worker_class], f"redis://127.0.0.1:{redis.port}/0", workdir
                )
                results["variants"][worker_class] = {
                    "echo": measure_echo(variant, scale),
                    "capacity": measure_capacity(variant, scale),
                    "fanout": measure_fanout(variant, scale),
                }
    finally:
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
    write_chart(results, output / "latency.png")
    write_markdown(results, output / "BENCHMARKS.md", "latency.png")
    say(f"wrote {output / 'BENCHMARKS.md'}")
    return 0


FAILURE_CAUSES = {
    "HTTP 503": "the service's capacity guard refused the socket: a worker had no "
    "room left (its threads or worker_connections, less the reserve kept for "
    "HTTP), and the busier of the two workers fills first",
    "timeout (handshake)": "the server took no more handshakes in time: all of "
    "its threads were busy, and gthread queues what it cannot serve",
    "EMFILE (handshake)": "the client's open-file limit",
}


def notes(results: dict) -> list[str]:
    """What the figures say about their own limits, in sentences."""
    cores = results["machine"]["cores"]
    lines = []
    others = results.get("others_cpu_share")
    if results["load_before"] > 0.5 or (others or 0) > 0.05:
        during = (
            f", and other processes used {others:.0%} of its CPU during the run"
            if others is not None
            else ""
        )
        lines.append(
            f"- **Other work.** The load average was {results['load_before']:.1f} "
            f"before the run on {cores} cores{during}: absolute figures are lower "
            "than on a quiet machine, and ratios taken minutes apart carry that "
            "noise."
        )
    for worker_class, section in results["variants"].items():
        lines += echo_notes(worker_class, section["echo"], cores)
        lines += capacity_notes(worker_class, section["capacity"])
    lines += fanout_notes(results)
    return lines


def echo_notes(worker_class: str, rows: list[dict], cores: int) -> list[str]:
    counts = sorted({row["connections"] for row in rows})
    middle = counts[len(counts) // 2] if counts else None
    at = {row["target"]: row["report"] for row in rows if row["connections"] == middle}
    if not {"baseline", "nginx"} <= at.keys():
        return []
    base, proxied = at["baseline"], at["nginx"]

    def busy(report: dict) -> float:
        return report["client_cpu_share"] + sum(
            report[group]["cpu_share"] or 0
            for group in ("server", "proxy")
            if group in report
        )

    direct = at.get("app")
    text = (
        f"- **{worker_class}, echo at {middle:,} connections.** The baseline made "
        f"{number(base['round_trips_per_second'])} round trips/s ({cpu(base)})"
    )
    if direct:
        share = direct["round_trips_per_second"] / base["round_trips_per_second"]
        text += f"; the service straight from gunicorn ×{share:.2f} ({cpu(direct)})"
    share = proxied["round_trips_per_second"] / base["round_trips_per_second"]
    text += (
        f"; through nginx ×{share:.2f} ({cpu(proxied)}), {busy(proxied):.0%} of "
        f"the {cores * 100}% the machine has. "
    )
    if busy(proxied) >= 0.85 * cores:
        text += (
            "The cores were full: nginx and the client take CPU the app would "
            "otherwise have, so a hop through nginx on the same machine costs "
            "throughput."
        )
    else:
        text += (
            "These processes did not fill the cores: each connection waits for its "
            "echo before "
            "sending again, so the time of one round trip (one more hop through "
            "nginx, the service's work per message) sets the pace."
        )
    return [text]


def capacity_notes(worker_class: str, rows: list[dict]) -> list[str]:
    lines = []
    for row in rows:
        if row["compression"] != "off":
            continue
        report = row["report"]
        reason = first_failure(report)
        if reason == "none":
            cause = f"nothing failed up to the {row['tried']:,} tried"
        else:
            cause = FAILURE_CAUSES.get(reason, reason)
        lines.append(
            f"- **{worker_class}, {LABELS[row['target']]}: "
            f"{held(report):,} sockets** held with no error. First failure: "
            f"{reason}; {cause}."
        )
    by_key = {(r["target"], r["compression"]): r["report"] for r in rows}
    off, on = by_key.get(("nginx", "off")), by_key.get(("nginx", "on"))
    base = by_key.get(("baseline", "off"))
    if off and base and opening_rate(off) and opening_rate(base):
        lines.append(
            f"- **{worker_class}, opening sockets.** The service opened "
            f"{opening_rate(off):,.0f} a second through nginx, the baseline "
            f"{opening_rate(base):,.0f} (the client asks for up to 1,000): each "
            "of the service's handshakes checks the Origin and the bearer "
            "token, loads the user from the database and logs a line, before "
            "the upgrade."
            + (
                " The baseline's rate is low because its handshakes beyond "
                "the threads wait in gthread's queue until they time out."
                if first_failure(base).startswith("timeout")
                else ""
            )
        )
    if off and on and kilobytes(off) is not None and kilobytes(on) is not None:
        lines.append(
            f"- **{worker_class}, memory.** An idle socket costs the service "
            f"{kilobytes(off):.1f} KB without permessage-deflate and "
            f"{kilobytes(on):.1f} KB with it: zlib keeps a compressor and a "
            "decompressor for each socket for as long as it lives. Beyond the "
            "baseline's, the service keeps for each socket its request's context "
            "(the loaded user, the session) and a lock and registry entry of its "
            "own. nginx adds "
            f"about {number(kilobytes(off, 'proxy'), 1, ' KB')} per socket of "
            "its own."
        )
    return lines


def fanout_notes(results: dict) -> list[str]:
    lines = []
    for worker_class, section in results["variants"].items():
        at = {row["target"]: row["report"] for row in section["fanout"]}
        base, proxied = at.get("baseline", {}), at.get("nginx", {})
        if base.get("all_ms_median") and proxied.get("all_ms_median"):
            lines.append(
                f"- **{worker_class}, fan-out.** One message reached "
                f"{proxied['reached_min']:,} subscribers in "
                f"{proxied['all_ms_median']:.0f} ms through nginx (the baseline: "
                f"{base['all_ms_median']:.0f} ms to {base['reached_min']:,}). The "
                "service's hub reads each message from Redis once per worker and "
                "writes it to every socket of that worker, one after another; the "
                "baseline has Redis write it once per socket."
            )
    return lines


if __name__ == "__main__":
    sys.exit(main())
