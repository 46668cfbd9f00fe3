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
two workers. The clients are benchmarks/loadtest.py and benchmarks/fanout.py,
run by each bake's venv python.

Most figures are measured from outside: by the client, from /proc, from the
kernel's TCP table. The baseline has no /metrics, so every figure compared
with it is measured that way on both. What the service counts itself is read
from its GET /metrics as well, where that is simpler than measuring it
(benchmarks/service_metrics.py): the sockets its workers admit together, the
sockets they hold at the end of the hold, the handshakes by outcome (why a
socket was refused), and the chat's own delivery time. BENCHMARKS.md says
which figure came from where.

It writes results.json, then BENCHMARKS.md and latency.png from it
(benchmarks/report.py, which also rewrites them from an earlier results.json
without measuring), to benchmarks/ (--quick: to a temporary folder, unless
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
NGINX_RLIMIT_NOFILE = 2 * NGINX_WORKER_CONNECTIONS


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
    baked = Bake(worker_class, root, package)
    # The bake's own Settings (pydantic-settings) name its variables.
    script = f"from {package}.config import Settings; print(*Settings.model_fields)"
    baked.setting_names = tuple(run([baked.python, "-c", script]).stdout.split())
    return baked


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

    def nginx(self, app: Service):
        prefix = Path(tempfile.mkdtemp(prefix="nginx-", dir=self.logs))
        # nginx's own limit on /auth/ too, for the same reason.
        return self.nginx_class(
            prefix,
            [f"127.0.0.1:{app.port}"],
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


def metrics_url(app: Service) -> str:
    """The service's GET /metrics, from gunicorn itself: nginx refuses it."""
    return f"http://127.0.0.1:{app.port}/metrics"


def loadtest(variant: Variant, url: str, *, authenticated: bool, **options) -> dict:
    """Run benchmarks/loadtest.py with the bake's python; its JSON report."""
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
                    scraped = None  # it has no /metrics
                else:
                    server = stack.start(variant.app(compression))
                    proxy = stack.start(variant.nginx(server))
                    url = f"ws://127.0.0.1:{proxy.port}/ws/echo"
                    scraped = metrics_url(server)
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
                    metrics_url=scraped,
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
                scraped = None  # it has no /metrics
            else:
                server = stack.start(variant.app())
                proxy = stack.start(variant.nginx(server))
                url = f"ws://127.0.0.1:{proxy.port}/ws/chat"
                scraped = metrics_url(server)
                token = requests.post(
                    f"{proxy.url}/auth/token", auth=(USER, PASSWORD), timeout=10
                ).json()["token"]
            report_path = variant.logs / f"fanout-{secrets.token_hex(4)}.json"
            command = [
                variant.bake.python,
                BENCHMARKS / "fanout.py",
                url,
                *("-n", scale.subscribers, "--messages", scale.fanout_messages),
                *("--server-pid", server.pid, "--server-port", server.port),
                *("--json", report_path),
            ]
            if token:
                command += ["--token", token]
            if scraped:
                command += ["--metrics-url", scraped]
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
        "servers": {
            "workers": WORKERS,
            "threads": THREADS,
            "worker_connections": WORKER_CONNECTIONS,
            "timeout": TIMEOUT,
            "keepalive": KEEPALIVE,
            "nginx_worker_connections": NGINX_WORKER_CONNECTIONS,
            "nginx_rlimit_nofile": NGINX_RLIMIT_NOFILE,
        },
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
    say(f"wrote {write_report(results, output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
