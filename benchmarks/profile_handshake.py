"""Where a handshake's time goes, and what the service adds to each echo.

    .venv/bin/python -m pip install py-spy      # into the bake's venv only
    .venv/bin/python /path/to/benchmarks/profile_handshake.py /tmp/bakes/NAME \\
        --rounds 3 --json profile-gthread.json

Run with a bake's own python (a project baked with broadcast=redis, as
benchmarks/run.py bakes it). It starts, on free loopback ports, a redis-server
of its own, the baseline (benchmarks/baseline_app.py) under gunicorn with the
same settings as run.py, the service from gunicorn.conf.py (APP_ENV=production,
so LOG_FORMAT=json, as run.py runs it), and the bake's nginx in front of the
service. Then, for each target:

- timed, `--rounds` times, alternating the targets: N handshakes (open a
  socket with a bearer token, close it with 1000, wait for the server to close
  the TCP connection), `--concurrency` at a time and then one at a time; echo
  round trips on one socket; echo round trips on many sockets at once. The CPU
  seconds gunicorn's workers and nginx's processes used are read from /proc
  before and after each step, so each figure is also CPU per handshake or per
  message, which the 2 shared cores blur far less than a rate;
- profiled: the same load again under py-spy (a sampling profiler that reads
  every thread of every worker from outside, gthread's pool and reader threads
  and gevent's greenlets alike), whose stacks are sorted into the steps of a
  handshake (`CATEGORIES`) and turned into CPU microseconds per handshake or
  per message with the workers' measured CPU.

`--floor STEPS` (token, user, count, comma-separated; may be repeated) also
times benchmarks/floor_app.py, straight and behind the bake's nginx: the
baseline plus only those steps of an authenticated, per-user-limited
handshake, the least any service with the generated one's guarantees must do.
`--steps` times only the steps it names.

Why py-spy and not pyinstrument: pyinstrument profiles the thread it is
started in; a gthread worker serves each socket from a pool thread plus a
reader thread of simple-websocket's, so a profiler started in
`post_worker_init` would see none of it. It also hooks every call, which
inflates call-heavy code; py-spy only samples.

The client is raw sockets on asyncio (prebuilt frames, no WebSocket library),
so that it costs as little as it can; its own CPU is reported too. Only
loopback addresses are used; every loop is bounded in count and time.
"""

# The closures made in the loops of main() are called at once, in the same
# iteration (B023 is about closures called later).
# ruff: noqa: B023

import argparse
import asyncio
import base64
import json
import os
import re
import secrets
import signal
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path

# A sibling in benchmarks/: the service's settings and the worker sizes are
# run.py's.
import run as bench

BENCHMARKS = Path(__file__).resolve().parent
USER = "profile@example.com"
PASSWORD = secrets.token_urlsafe(16)
WORKERS = bench.WORKERS
THREADS = bench.THREADS
WORKER_CONNECTIONS = bench.WORKER_CONNECTIONS
KEEPALIVE = 5
TIMEOUT = 30
CLK_TCK = os.sysconf("SC_CLK_TCK")
STEP_TIMEOUT = 120  # seconds; no step waits longer for the server


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, seconds=60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing listens on {port} after {seconds} s")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=45)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- CPU from /proc ------------------------------------------------------------


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


def own_cpu() -> float:
    usage = os.times()
    return usage.user + usage.system


# --- the client ------------------------------------------------------------------

KEY = base64.b64encode(b"0123456789abcdef").decode()
MASK = b"\x11\x22\x33\x44"


def masked_frame(opcode: int, payload: bytes) -> bytes:
    assert len(payload) < 126
    body = bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + MASK + body


CLOSE_FRAME = masked_frame(0x8, (1000).to_bytes(2, "big"))
MESSAGE = b'{"text": "a message of a few dozen bytes, like a chat"}'
MESSAGE_FRAME = masked_frame(0x1, MESSAGE)


def upgrade_request(path: str, port: int, token: str | None) -> bytes:
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {KEY}",
        "Sec-WebSocket-Version: 13",
    ]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def open_socket(port: int, request: bytes):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = head.split(b" ", 2)[1]
    if status != b"101":
        writer.close()
        raise RuntimeError(f"handshake answered {head[:200]!r}")
    return reader, writer


async def read_frame(reader, writer) -> tuple[int, bytes]:
    while True:
        first, second = await reader.readexactly(2)
        size = second & 0x7F
        if size == 126:
            size = int.from_bytes(await reader.readexactly(2), "big")
        elif size == 127:
            size = int.from_bytes(await reader.readexactly(8), "big")
        payload = await reader.readexactly(size)
        opcode = first & 0x0F
        if opcode == 0x9:  # a ping: answer it, read on
            writer.write(masked_frame(0xA, payload))
            continue
        return opcode, payload


async def close_socket(reader, writer) -> None:
    writer.write(CLOSE_FRAME)
    # Until the server has answered the close and ended the TCP connection:
    # the whole life of the socket on the server is inside the timed span.
    while await reader.read(4096):
        pass
    writer.close()


async def handshakes(port, path, token, count, concurrency) -> list[float]:
    request = upgrade_request(path, port, token)
    times: list[float] = []
    queue = iter(range(count))

    async def worker():
        for _ in queue:
            started = time.perf_counter()
            reader, writer = await open_socket(port, request)
            await close_socket(reader, writer)
            times.append(time.perf_counter() - started)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return times


async def echoes(port, path, token, sockets, per_socket) -> list[float]:
    request = upgrade_request(path, port, token)
    opened = [await open_socket(port, request) for _ in range(sockets)]
    times: list[float] = []
    started_all = time.perf_counter()

    async def talk(reader, writer):
        for _ in range(per_socket):
            started = time.perf_counter()
            writer.write(MESSAGE_FRAME)
            opcode, payload = await read_frame(reader, writer)
            assert opcode == 0x1 and payload == MESSAGE, (opcode, payload[:100])
            times.append(time.perf_counter() - started)

    await asyncio.gather(*(talk(r, w) for r, w in opened))
    elapsed = time.perf_counter() - started_all
    await asyncio.gather(*(close_socket(r, w) for r, w in opened))
    return times, elapsed


# --- the servers --------------------------------------------------------------------


class Bench:
    def __init__(self, bake: Path, workdir: Path):
        self.bake = bake
        self.workdir = workdir
        (self.package,) = [p.parent.name for p in (bake / "src").glob("*/__init__.py")]
        self.worker_class = (
            "gevent"
            if "gevent" in (bake / "gunicorn.conf.py").read_text()
            else "gthread"
        )
        self.bin = bake / ".venv" / "bin"
        self.processes: list[subprocess.Popen] = []
        self.nginx_processes = []
        self.redis_port = free_port()
        redis = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
        )
        self.processes.append(redis)
        wait_for_port(self.redis_port, redis)
        self.settings = {
            **bench.service_settings(
                f"sqlite:///{workdir / 'profile.db'}",
                f"redis://127.0.0.1:{self.redis_port}/0",
            ),
            "WS_COMPRESSION": "off",
        }
        env = self.env()
        flask = [self.bin / "flask", "--app", self.package]
        subprocess.run(
            [*flask, "db", "upgrade"],
            cwd=bake,
            env=env,
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [*flask, "users", "create", USER, "--password", PASSWORD],
            cwd=bake,
            env=env,
            check=True,
            capture_output=True,
        )

    def env(self, **extra) -> dict:
        return {**os.environ, **self.settings, **extra}

    def start(self, command, cwd, env, name) -> tuple[subprocess.Popen, int]:
        port = free_port()
        command = [str(c).replace("{port}", str(port)) for c in command]
        log = (self.workdir / f"{name}.log").open("w")
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        self.processes.append(process)
        wait_for_port(port, process)
        time.sleep(1)  # the second worker boots after the first listens
        return process, port

    def worker_options(self) -> list[str]:
        if self.worker_class == "gthread":
            return ["-k", "gthread", "--threads", str(THREADS)]
        return ["-k", "gevent", "--worker-connections", str(WORKER_CONNECTIONS)]

    def baseline(self):
        env = {**os.environ, "REDIS_URL": self.settings["REDIS_URL"]}
        command = self.baseline_command("baseline_app:app")
        return self.start(command, BENCHMARKS, env, "baseline")

    def baseline_command(self, app: str) -> list:
        return [
            self.bin / "gunicorn",
            *self.worker_options(),
            "--workers",
            WORKERS,
            "--timeout",
            TIMEOUT,
            "--keep-alive",
            KEEPALIVE,
            "--access-logfile",
            "-",
            "--no-control-socket",
            "--bind",
            "127.0.0.1:{port}",
            app,
        ]

    def floor_environment(self, steps: str) -> tuple[dict, str]:
        """(floor_app.py's environment with FLOOR_STEPS=steps, a token it takes)"""
        secret = secrets.token_urlsafe(32)
        env = {
            **os.environ,
            "REDIS_URL": self.settings["REDIS_URL"],
            "FLOOR_STEPS": steps,
            "FLOOR_SECRET": secret,
            "FLOOR_DATABASE": str(self.workdir / f"floor-{len(self.processes)}.db"),
        }
        from floor_app import make_token  # needs itsdangerous: the bake's python

        return env, make_token(secret)

    def floor(self, steps: str):
        """benchmarks/floor_app.py with FLOOR_STEPS=steps, gunicorn as the
        baseline's; returns (process, port, token)."""
        env, token = self.floor_environment(steps)
        command = [str(c) for c in self.baseline_command("floor_app:app")]
        process, port = self.start(
            command, BENCHMARKS, env, f"floor-{steps.replace(',', '-')}"
        )
        return process, port, token

    def service(self, **extra):
        command = [
            self.bin / "gunicorn",
            "-c",
            "gunicorn.conf.py",
            "--bind",
            "127.0.0.1:{port}",
        ]
        return self.start(command, self.bake, self.env(**extra), "service")

    def nginx(self, upstream_port: int):
        """The bake's tests/nginx.py, loaded as benchmarks/run.py loads it."""
        module = bench.bake_nginx_module(self.bake, self.worker_class)
        prefix = Path(tempfile.mkdtemp(prefix="nginx-", dir=self.workdir))
        nginx = module.Nginx(
            prefix,
            [f"127.0.0.1:{upstream_port}"],
            NGINX_AUTH_RATE="1000r/s",
            NGINX_AUTH_BURST="100000",
        ).start()
        self.nginx_processes.append(nginx)
        return nginx

    def token(self, port: int) -> str:
        basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/auth/token",
            method="POST",
            headers={"Authorization": f"Basic {basic}"},
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.load(answer)["token"]

    def close(self):
        for nginx in self.nginx_processes:
            nginx.stop()
        for process in reversed(self.processes):
            stop(process)


# --- measuring -------------------------------------------------------------------


def measure(step, server_pids, proxy_pids) -> dict:
    """Run `step` (a coroutine factory); CPU of the server and proxy around it."""
    server_before, proxy_before = cpu_seconds(server_pids), cpu_seconds(proxy_pids)
    client_before = own_cpu()
    started = time.perf_counter()
    result = asyncio.run(asyncio.wait_for(step(), STEP_TIMEOUT))
    elapsed = time.perf_counter() - started
    return {
        "result": result,
        "seconds": elapsed,
        "server_cpu": cpu_seconds(server_pids) - server_before,
        "proxy_cpu": cpu_seconds(proxy_pids) - proxy_before,
        "client_cpu": own_cpu() - client_before,
    }


def steps(args):
    """(name, units, coroutine factory taking (port, path, token)), the ones
    `--steps` names or all."""
    chosen = args.steps.split(",") if args.steps else None
    return [step for step in all_steps(args) if chosen is None or step[0] in chosen]


def all_steps(args):
    return [
        (
            "handshakes_concurrent",
            args.handshakes,
            lambda p, path, t: handshakes(
                p, path, t, args.handshakes, args.concurrency
            ),
        ),
        (
            "handshakes_one_at_a_time",
            args.handshakes // 4,
            lambda p, path, t: handshakes(p, path, t, args.handshakes // 4, 1),
        ),
        (
            "echo_one_socket",
            args.messages,
            lambda p, path, t: echoes(p, path, t, 1, args.messages),
        ),
        (
            "echo_many_sockets",
            args.sockets * (args.messages // args.sockets),
            lambda p, path, t: echoes(
                p, path, t, args.sockets, args.messages // args.sockets
            ),
        ),
    ]


def summarize(name, units, measured) -> dict:
    result = measured["result"]
    if name.startswith("echo"):
        times, elapsed = result
    else:
        times, elapsed = result, measured["seconds"]
    times = sorted(times)
    return {
        "per_second": units / elapsed,
        "p50_ms": 1000 * times[len(times) // 2],
        "p99_ms": 1000 * times[int(len(times) * 0.99)],
        "server_cpu_us": 1e6 * measured["server_cpu"] / units,
        "proxy_cpu_us": 1e6 * measured["proxy_cpu"] / units,
        "client_cpu_us": 1e6 * measured["client_cpu"] / units,
    }


# --- profiling ---------------------------------------------------------------------

# Ordered markers, matched against a frame's "function (file:line)". The
# deepest frame that matches a strong marker names the sample's category; a
# sample with none falls back to the deepest weak one, else "other".
STRONG = [
    ("logging", r"[(/]logging/|logs\.py|glogging\.py"),
    ("metrics (prometheus)", r"prometheus_client|[(/]metrics\.py"),
    ("token check (itsdangerous)", r"itsdangerous|auth/tokens\.py"),
    (
        "user load (Flask-Login, SQLAlchemy, sqlite)",
        r"flask_login|sqlalchemy|auth/loaders\.py|auth/models\.py|sqlite3",
    ),
    ("per-user count (Redis)", r"redis_user_sockets\.py|[(/]redis/"),
    (
        "admission (origin, capacity, session)",
        r"realtime/guards\.py|realtime/session\.py",
    ),
    ("connection wrapper (connections.py)", r"realtime/connections\.py"),
    ("outbox (outbox.py)", r"realtime/outbox\.py"),
    ("revocation check thread", r"realtime/revocations\.py"),
    ("echo/chat handler (routes.py)", r"realtime/routes\.py"),
    ("rate limiter (Flask-Limiter, limits)", r"flask_limiter|[(/]limits/"),
    (
        "Flask-Sock / simple-websocket / wsproto",
        r"flask_sock|simple_websocket|wsproto|h11",
    ),
    ("Flask request/app context, werkzeug", r"[(/]flask/|[(/]werkzeug/"),
    ("app's other request hooks", r"[(/]PACKAGE/"),
    ("baseline_app.py", r"baseline_app\.py"),
]
WEAK = [
    ("gunicorn (HTTP parsing, worker loop)", r"[(/]gunicorn/"),
    ("gevent hub and sockets", r"[(/]gevent/|greenlet"),
    (
        "threads, selectors, sockets",
        r"threading\.py|selectors\.py|socket\.py|queue\.py",
    ),
]


def category(frames: list[str], package: str) -> str:
    # With --subprocesses, py-spy's first frames name the processes, by their
    # command line, which holds the bake's path: not code.
    frames = [frame for frame in frames if not frame.startswith("process ")]
    found = None
    for frame in frames:
        for name, pattern in STRONG:
            pattern = pattern.replace("PACKAGE", package)
            if re.search(pattern, frame):
                found = name
                break
    if found:
        return found
    for frame in frames:
        for name, pattern in WEAK:
            if re.search(pattern, frame):
                found = name
    return found or "other"


def profile(
    bench, master_pid: int, run_load, seconds_hint: float, out: Path
) -> Counter:
    """py-spy on the gunicorn master and its workers while `run_load` runs."""
    py_spy = bench.bin / "py-spy"
    command = [
        py_spy,
        "record",
        "--pid",
        str(master_pid),
        "--subprocesses",
        "--nonblocking",
        "--rate",
        "400",
        "--format",
        "raw",
        "--output",
        str(out),
        "--duration",
        str(int(seconds_hint) + 60),
    ]
    spy = subprocess.Popen(
        [str(c) for c in command],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(2)  # py-spy attaches
    run_load()
    spy.send_signal(signal.SIGINT)  # it writes what it has and exits
    try:
        spy.wait(timeout=60)
    except subprocess.TimeoutExpired:
        spy.kill()
    samples: Counter = Counter()
    if not out.exists():
        raise RuntimeError(f"py-spy wrote nothing: {spy.stderr.read()}")
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        # The master's own samples (it only watches its workers) are left out.
        if any("arbiter.py" in f and "run (" in f for f in frames[:3]) and not any(
            "workers/" in f for f in frames
        ):
            continue
        if not count.isdigit():  # a line cut short as py-spy was stopped
            continue
        samples[category(frames, bench.package)] += int(count)
    return samples


# --- main ----------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bake", type=Path, help="a baked project with its .venv")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--handshakes", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--sockets", type=int, default=100)
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument(
        "--floor",
        action="append",
        default=[],
        metavar="STEPS",
        help="also measure floor_app.py with these FLOOR_STEPS "
        "(e.g. token,user,count); may be given more than once",
    )
    parser.add_argument(
        "--steps",
        help="only these steps, comma-separated (e.g. handshakes_concurrent)",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="pf-profile-"))
    bench = Bench(args.bake.resolve(), workdir)
    report = {
        "worker_class": bench.worker_class,
        "args": vars(args) | {"bake": str(args.bake), "json": str(args.json)},
        "rounds": [],
        "profiles": {},
    }
    try:
        baseline, baseline_port = bench.baseline()
        service, service_port = bench.service()
        nginx = bench.nginx(service_port)
        token = bench.token(service_port)
        baseline_workers = children(baseline.pid)
        service_workers = children(service.pid)
        nginx_pids = [nginx.process.pid, *children(nginx.process.pid)]
        targets = {
            "baseline": (baseline_port, "/echo", None, baseline_workers, []),
            "service": (service_port, "/ws/echo", token, service_workers, []),
            "nginx": (nginx.port, "/ws/echo", token, service_workers, nginx_pids),
        }
        for floor_steps in args.floor:
            floor, floor_port, floor_token = bench.floor(floor_steps)
            floor_workers = children(floor.pid)
            targets[f"floor[{floor_steps}]"] = (
                floor_port,
                "/ws/echo",
                floor_token,
                floor_workers,
                [],
            )
            # The same generated nginx in front, as the service's.
            floor_nginx = bench.nginx(floor_port)
            targets[f"floor[{floor_steps}] via nginx"] = (
                floor_nginx.port,
                "/ws/echo",
                floor_token,
                floor_workers,
                [floor_nginx.process.pid, *children(floor_nginx.process.pid)],
            )
        # Warm up: imports, pools, the first request of each worker.
        for port, path, tok, _, _ in targets.values():
            asyncio.run(handshakes(port, path, tok, 50, 5))
        for number in range(args.rounds):
            row = {}
            for name, units, step in steps(args):
                for target, (port, path, tok, server, proxy) in targets.items():
                    measured = measure(lambda: step(port, path, tok), server, proxy)
                    row[f"{target}/{name}"] = summarize(name, units, measured)
                    print(
                        f"round {number + 1} {target}/{name}: "
                        f"{row[f'{target}/{name}']}",
                        flush=True,
                    )
            report["rounds"].append(row)
        # Every socket a floor counted in was counted out as it closed.
        report["floor_counted_at_the_end"] = {
            name: int(
                urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/count", timeout=30
                ).read()
            )
            for name, (port, *_) in targets.items()
            if name.startswith("floor[") and not name.endswith(" via nginx")
        }
        print(f"floor sockets still counted: {report['floor_counted_at_the_end']}")
        if not args.no_profile:
            for target in ("baseline", "service"):
                port, path, tok, server, _ = targets[target]
                master = baseline.pid if target == "baseline" else service.pid
                for name, units, step in steps(args):
                    if name == "handshakes_one_at_a_time":
                        continue
                    holder = {}

                    def load():
                        holder["m"] = measure(lambda: step(port, path, tok), server, [])

                    out = workdir / f"pyspy-{target}-{name}.txt"
                    samples = profile(bench, master, load, 60, out)
                    cpu_us = 1e6 * holder["m"]["server_cpu"] / units
                    total = sum(samples.values()) or 1
                    report["profiles"][f"{target}/{name}"] = {
                        "server_cpu_us_per_unit": cpu_us,
                        "samples": total,
                        "split_us": {
                            k: cpu_us * v / total for k, v in samples.most_common()
                        },
                        "raw": str(out),
                    }
                    print(
                        f"profile {target}/{name}: {cpu_us:.0f} us/unit, "
                        f"{total} samples",
                        flush=True,
                    )
                    for k, v in samples.most_common():
                        print(
                            f"    {cpu_us * v / total:8.0f} us"
                            f"  {100 * v / total:5.1f}%  {k}"
                        )
    finally:
        bench.close()
    medians = defaultdict(dict)
    for key in report["rounds"][0]:
        for field in report["rounds"][0][key]:
            medians[key][field] = statistics.median(
                r[key][field] for r in report["rounds"]
            )
    report["medians"] = medians
    print(json.dumps(medians, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    print(f"work folder (logs, py-spy stacks): {workdir}")


if __name__ == "__main__":
    main()
