"""The reconnect storm: what a deploy does to a busy service, measured.

    .venv/bin/python benchmarks/storm.py /path/to/a/bake -n 10000 --json storm.json

Run by a bake's own venv python (it has websockets, requests and pytest, which
the bake's tests/nginx.py needs), given the bake's folder. It starts what
benchmarks/run.py starts, with the same settings: the bake's gunicorn from its
gunicorn.conf.py (the worker class as baked, two workers), the machine's nginx
in front with the bake's generated configuration (tests/nginx.py), a
migrated SQLite database with one user, and a redis-server of its own for a
bake with broadcast = redis. The per-user socket limit and the login limits
are lifted, as run.py lifts them.

Then it opens N sockets through nginx to /ws/echo with a bearer token fetched
once up front (a lean client of its own, `LeanSocket`: raw frames on asyncio,
so that the clients take as little of the shared cores as they can), checks
each with an echo, and restarts gunicorn as a deploy
does (see `restart`). With --takeover overlap (the default, the order the
generated docs/production.md gives a deploy) a new gunicorn starts on the
same port while the old one still serves (both listen with SO_REUSEPORT) and
the old master gets SIGTERM once the new one answers /readyz. With
--takeover sequential (a restarted unit or container) the old master gets
SIGTERM first, and the new gunicorn starts as soon as the old one has let go
of the port. Every client reconnects when its
socket closes, with full-jitter exponential backoff: before attempt k (from
0) it waits a delay drawn uniformly from [0, min(cap, base * 2**k)]; a
refused handshake (502 while no gunicorn listens, 503, 429), a failed connect
or a timeout counts as an attempt. Back, it echoes once; that client is then
back. A client whose new socket closes before everyone is back reconnects
again, and counts as back only once it is.

It reports the time from SIGTERM until all N are back and have echoed, the
percentiles of each client's time to be back (from SIGTERM and from its own
close), the attempts, the failed attempts by reason (HTTP status, close code,
errno name, timeout), the close codes the storm's closes carried (every one
should be 1001), the peak of successful handshakes (and of attempts) in any
one second, and when the old gunicorn let go of the port, the new one started
and first answered /healthz, and the old one exited; and, second by second,
the attempts, the handshakes and the clients back. The CPU seconds each part
used from the SIGTERM to the end (old and new gunicorn, nginx, redis-server,
this client, and the rest of a shared machine), in all and second by second,
say where the time went; the client's own share says whether the client,
rather than the service, set the pace. The exit status
is 1 when a client was not back within --deadline seconds of the SIGTERM.
"""

import argparse
import asyncio
import contextlib
import errno
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

# requests is in the bake's venv; the siblings in benchmarks/: run.py starts
# the servers as the benchmarks do, loadtest.py opens the sockets and names
# failures as its report does.
import loadtest
import requests
import run as bench

ROUTE = "/ws/echo"
# Seconds between looks at whether the old gunicorn still holds the port.
PORT_POLL_SECONDS = 0.005


# --- the servers -----------------------------------------------------------------


class Gunicorn(bench.Service):
    """The bake's gunicorn as run.py's Variant.app starts it, on a given port:
    the new one must take the old one's."""

    def __init__(self, variant: bench.Variant, port: int, name: str):
        self.name = name
        self.port = port
        self.log_path = variant.logs / f"{name}-{port}.log"
        command = [variant.bake.bin("gunicorn"), "-c", "gunicorn.conf.py"]
        command += ["--bind", f"127.0.0.1:{port}"]
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [str(part) for part in command],
            cwd=variant.bake.root,
            env=variant.bake.environ(**variant.settings, WS_COMPRESSION="off"),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.pid = self.process.pid

    def first_answer(self, path: str, seconds: float) -> bool:
        """Whether `path` answered 200 within `seconds`. Unlike
        `wait_until_listening`, one request may wait as long as it takes (in a
        storm it queues behind thousands of handshakes) and the server is left
        running when it does not answer."""
        deadline = time.monotonic() + seconds
        url = f"http://127.0.0.1:{self.port}{path}"
        while (left := deadline - time.monotonic()) > 0:
            if self.process.poll() is not None:
                return False
            try:
                if requests.get(url, timeout=left).status_code == 200:
                    return True
            except (OSError, requests.RequestException):
                pass
            time.sleep(0.05)
        return False


def port_is_free(port: int) -> bool:
    """Whether nothing listens on 127.0.0.1:`port`, as gunicorn binds it (with
    SO_REUSEADDR, so connections in TIME_WAIT do not count)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                return False
            raise
        return True


def existing_bake(root: Path) -> bench.Bake:
    """A bake made earlier (cookiecutter, then its .venv), as run.py's own."""
    answers = json.loads((root / ".cookiecutter.json").read_text())["cookiecutter"]
    if answers.get("use_docker") != "y":
        sys.exit("error: the bake has no nginx configuration (use_docker=n)")
    if not (root / ".venv" / "bin" / "gunicorn").exists():
        sys.exit(f"error: {root}/.venv has no gunicorn; install the bake first")
    baked = bench.Bake(answers["worker_class"], root, answers["package_name"])
    script = (
        f"from {baked.package}.config import Settings; print(*Settings.model_fields)"
    )
    baked.setting_names = tuple(bench.run([baked.python, "-c", script]).stdout.split())
    baked.broadcast = answers["broadcast"]
    return baked


# --- who used the CPU -------------------------------------------------------------

TICK = os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float | None:
    """CPU seconds (user + system) of `pid` and its descendants, living or
    waited for (a gunicorn master's exited workers count in its cutime and
    cstime); None once `pid` is gone."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            stat = Path(f"/proc/{current}/stat").read_text()
            children = Path(f"/proc/{current}/task/{current}/children").read_text()
        except OSError:  # gone meanwhile
            if current == pid:
                return None
            continue
        fields = stat.rsplit(")", 1)[1].split()
        # A worker that has exited keeps its times until its master waits for
        # it, and they move to the master's cutime and cstime. The top one is
        # this process's child: its figure comes from CpuWatch.settle.
        if fields[0] == "Z" and current == pid:
            return None
        total += sum(int(value) for value in fields[11:15])
        pending += [int(child) for child in children.split()]
    return total / TICK


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy, every core together."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    # user nice system idle iowait irq softirq steal: all but idle and iowait.
    ticks = [int(value) for value in fields[:8]]
    return (sum(ticks) - ticks[3] - ticks[4]) / TICK


def tree_pids(pid: int) -> list[int]:
    """`pid` and its living descendants."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        try:
            children = Path(f"/proc/{current}/task/{current}/children").read_text()
        except OSError:
            continue
        found.append(current)
        pending += [int(child) for child in children.split()]
    return found


def waited_seconds(pid: int) -> float:
    """Seconds the threads of `pid` have spent runnable but waiting for a CPU
    (the second field of each thread's schedstat): how much a busy machine
    held it back, which its CPU time does not show."""
    total = 0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return 0.0
    for task in tasks:
        try:
            total += int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


class CpuWatch:
    """The CPU each part of the storm used, sampled from /proc every
    `interval` seconds by a thread of its own (the client's event loop is busy
    with the sockets): the old gunicorn (master and workers), the new one,
    nginx, redis-server, this client, and the machine as a whole; what the
    machine used beyond these is other people's work on a shared machine.

    A tree that has exited keeps its last sample, unless `settle` gives its
    final figure (the old gunicorn's, from its exit status)."""

    def __init__(self, interval: float = 0.25) -> None:
        self.interval = interval
        self.pids: dict[str, int] = {}
        # CPU seconds of each part when the count began.
        self.start: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self.settled: dict[str, float] = {}
        self.began = 0.0
        # (seconds since `begin`, {part: CPU seconds since `begin`})
        self.samples: list[tuple[float, dict[str, float]]] = []
        # part -> {pid: (waited for a CPU at its first look, at its last)}
        self.waits: dict[str, dict[int, tuple[float, float]]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def watch(self, name: str, pid: int, *, whole_life: bool = False) -> None:
        """Count `pid`'s tree from `begin` (or from now, if later), or over
        its whole life (a process started after `begin`)."""
        cpu = tree_cpu_seconds(pid) or 0.0
        self.pids[name] = pid
        self.start[name] = 0.0 if whole_life else cpu
        self.last[name] = cpu

    def settle(self, name: str, cpu_seconds: float) -> None:
        # Not below its last sample: a master that exits before it has
        # waited for a worker (one killed after graceful_timeout) leaves that
        # worker's time out of its own figure.
        self.settled[name] = max(cpu_seconds, self.last.get(name, 0.0))

    def begin(self) -> None:
        self._look_at_waits()
        self.began = time.monotonic()
        for name, pid in self.pids.items():
            self.start[name] = self.last[name] = tree_cpu_seconds(pid) or 0.0
        self.start["client"] = time.process_time()
        self.start["machine"] = machine_busy_seconds()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _look_at_waits(self) -> None:
        parts = {**self.pids, "client": os.getpid()}
        for name, top in parts.items():
            if name in self.settled:
                continue
            seen = self.waits.setdefault(name, {})
            for pid in tree_pids(top) if name != "client" else [top]:
                waited = waited_seconds(pid)
                first = seen[pid][0] if pid in seen else waited
                seen[pid] = (first, max(waited, seen.get(pid, (0, 0))[1]))

    def _sample(self) -> None:
        self._look_at_waits()
        now = {"client": time.process_time(), "machine": machine_busy_seconds()}
        for name, pid in list(self.pids.items()):
            cpu = self.settled.get(name)
            if cpu is None:
                cpu = tree_cpu_seconds(pid)
            if cpu is None:  # gone: its last sample stands
                cpu = self.last[name]
            now[name] = self.last[name] = cpu
        used = {name: round(now[name] - self.start[name], 3) for name in now}
        self.samples.append((time.monotonic() - self.began, used))

    def end(self) -> dict:
        """CPU seconds per part since `begin`, in all and second by second."""
        self._stop.set()
        self._thread.join()
        self._sample()
        elapsed, total = self.samples[-1]
        parts = {name: round(cpu, 2) for name, cpu in total.items()}
        ours = sum(cpu for name, cpu in total.items() if name != "machine")
        parts["others"] = round(total["machine"] - ours, 2)
        by_second: dict[str, list[float]] = {name: [] for name in total}
        previous = dict.fromkeys(total, 0.0)
        for second in range(1, math.ceil(elapsed) + 1):
            sampled = [used for at, used in self.samples if at <= second]
            if not sampled:
                continue
            for name in total:
                value = sampled[-1].get(name, previous[name])
                by_second[name].append(round(value - previous[name], 2))
                previous[name] = value
        waited = {
            name: round(sum(last - first for first, last in seen.values()), 2)
            for name, seen in self.waits.items()
        }
        return {
            "seconds": round(elapsed, 2),
            "cpu_seconds": parts,
            # Seconds each part's processes (all threads together) were ready
            # to run but waited for a CPU: well above its CPU seconds, the
            # machine, not the part's own work, set its pace.
            "waited_for_cpu_seconds": waited,
            "cpu_by_second": by_second,
        }


# --- the clients -----------------------------------------------------------------


@dataclass
class Storm:
    plan: loadtest.Plan
    base: float
    cap: float
    sigterm_at: float = 0.0
    all_back_at: float | None = None
    back_now: int = 0
    everyone_back: asyncio.Event = field(default_factory=asyncio.Event)
    # The code each storm close carried (a client's first close after SIGTERM).
    close_codes: Counter = field(default_factory=Counter)
    # Closes of a socket a client had got back, before everyone was back.
    closed_again: Counter = field(default_factory=Counter)
    attempts: int = 0
    # Monotonic times the attempts began.
    attempt_times: list[float] = field(default_factory=list)
    failed_attempts: Counter = field(default_factory=Counter)
    # Monotonic times of the handshakes that succeeded after SIGTERM.
    handshakes: list[float] = field(default_factory=list)
    # The upgrade request every client sends (loadtest.upgrade_request).
    request: bytes = b""


# The opcodes of RFC 6455, section 5.2.
TEXT, CLOSE, PING, PONG = 0x1, 0x8, 0x9, 0xA
# Seconds a client waits for the server to close the connection after it
# answered the server's close frame.
CLOSE_TIMEOUT = 10


class LeanSocket(asyncio.Protocol):
    """A client WebSocket that does what a storm's clients need and no more:
    the upgrade (one prebuilt request with the bearer token), short text
    messages both ways, a pong for every ping (the server pings idle
    sockets), and the answer to the server's close frame, after which the
    server closes the connection.

    Ten thousand clients and the service share this machine's cores, and
    websockets' client took about 1.5 ms of CPU per reconnection: close to
    the service's own cost, so the client set much of the storm's pace. This
    one takes a fraction of that (the report gives the client's CPU).
    Frames from the server are whole messages here (echoes, pings, a close),
    never fragmented or compressed: the client offers no extension."""

    def __init__(self, request: bytes) -> None:
        loop = asyncio.get_running_loop()
        self._request = request
        self._buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.upgraded = loop.create_future()
        self.closed = loop.create_future()
        self.close_code: int | None = None
        self._reply: asyncio.Future | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self.upgraded.done():
            status = loadtest.upgrade_status(self._buffer)
            if status is None:
                return
            if status != 101:
                self.upgraded.set_exception(loadtest.HandshakeRefused(status))
                self.transport.abort()
                return
            self.upgraded.set_result(None)
        for opcode, payload in loadtest.server_frames(self._buffer):
            self._frame(opcode, payload)

    def _frame(self, opcode: int, payload: bytes) -> None:
        if opcode == PING:
            self.transport.write(loadtest.client_frame(PONG, payload))
        elif opcode == CLOSE:
            if self.close_code is None:
                # 1005: a close frame without a code.
                code = int.from_bytes(payload[:2], "big") if payload else 1005
                self.close_code = code
                self.transport.write(loadtest.client_frame(CLOSE, payload[:2]))
                # The server closes the connection next; if it does not, so
                # does the client, as websockets' does after close_timeout.
                asyncio.get_running_loop().call_later(
                    CLOSE_TIMEOUT, self.transport.abort
                )
        elif opcode == TEXT and self._reply is not None and not self._reply.done():
            self._reply.set_result(payload)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.close_code is None:
            self.close_code = 1006  # closed without a close frame
        for future in (self.upgraded, self._reply):
            if future is not None and not future.done():
                future.set_exception(loadtest.ConnectionClosedBy(self.close_code))
        if not self.closed.done():
            self.closed.set_result(None)

    async def echo(self, text: str, timeout: float) -> None:
        """Send `text`, wait for it to come back."""
        if self.closed.done():
            raise loadtest.ConnectionClosedBy(self.close_code)
        self._reply = asyncio.get_running_loop().create_future()
        payload = text.encode()
        self.transport.write(loadtest.client_frame(TEXT, payload))
        if await asyncio.wait_for(self._reply, timeout) != payload:
            raise ValueError("echo mismatch")

    async def wait_closed(self) -> None:
        await asyncio.shield(self.closed)

    def abort(self) -> None:
        self.transport.abort()


async def open_lean(plan: loadtest.Plan, index: int, request: bytes) -> LeanSocket:
    """TCP, then the upgrade: the socket once the server answered 101."""
    sock = await loadtest.connected_socket(plan, index)
    loop = asyncio.get_running_loop()
    try:
        _, lean = await loop.create_connection(lambda: LeanSocket(request), sock=sock)
    except BaseException:
        sock.close()
        raise
    try:
        await lean.upgraded
    except BaseException:
        lean.abort()
        raise
    return lean


@dataclass
class Client:
    index: int
    ws: LeanSocket | None = None
    closed_at: float | None = None
    back_at: float | None = None
    attempts: int = 0
    last_failure: str | None = None
    back: bool = False


async def open_and_echo(storm: Storm, client: Client, text: str):
    """One attempt: connect, handshake, echo. The socket, or the exception."""
    plan = storm.plan
    step, ws = "handshake", None
    try:
        ws = await asyncio.wait_for(
            open_lean(plan, client.index, storm.request), plan.timeout
        )
        if storm.sigterm_at:
            storm.handshakes.append(time.monotonic())
        step = "echo"
        await ws.echo(text, plan.timeout)
        return ws
    except Exception as error:
        if ws is not None:
            ws.abort()
        client.last_failure = loadtest.failure_reason(error, step)
        raise


async def reconnect(storm: Storm, client: Client):
    """Until it is back: wait a full-jitter delay, then try once."""
    attempt = 0
    while True:
        ceiling = min(storm.cap, storm.base * 2**attempt)
        await asyncio.sleep(random.uniform(0, ceiling))  # noqa: S311 (jitter)
        attempt += 1
        client.attempts += 1
        storm.attempts += 1
        storm.attempt_times.append(time.monotonic())
        try:
            return await open_and_echo(storm, client, f"back {client.index}")
        except Exception:
            storm.failed_attempts[client.last_failure] += 1


async def live(storm: Storm, client: Client) -> None:
    """Hold the socket; when it closes, come back. Cancelled at the end."""
    while True:
        await client.ws.wait_closed()
        # 1006: closed without a close frame.
        code = client.ws.close_code or 1006
        if client.closed_at is None:
            client.closed_at = time.monotonic()
            storm.close_codes[code] += 1
        else:
            storm.closed_again[code] += 1
        if client.back:
            client.back = False
            storm.back_now -= 1
        client.ws = await reconnect(storm, client)
        client.back, client.back_at = True, time.monotonic()
        storm.back_now += 1
        if storm.back_now == storm.plan.connections:
            storm.all_back_at = time.monotonic()
            storm.everyone_back.set()


async def open_all(storm: Storm, clients: list[Client], progress) -> Counter:
    """The N sockets before the storm, at --rate, --concurrency in flight; the
    failures by reason (none expected)."""
    plan = storm.plan
    failures: Counter = Counter()
    gate = asyncio.Semaphore(plan.concurrency)
    started = time.monotonic()

    async def one(client: Client) -> None:
        try:
            client.ws = await open_and_echo(storm, client, f"hello {client.index}")
        except Exception:
            failures[client.last_failure] += 1
        finally:
            gate.release()

    tasks = []
    for client in clients:
        delay = started + client.index / plan.rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await gate.acquire()
        tasks.append(asyncio.create_task(one(client)))
        progress(f"opening: {client.index + 1} of {plan.connections} started")
    await asyncio.gather(*tasks)
    for client in clients:
        client.last_failure = None
    return failures


# --- the restart -------------------------------------------------------------------


async def start_first(
    variant: bench.Variant, old: Gunicorn
) -> tuple[Gunicorn, float, float]:
    """--takeover overlap, before the SIGTERM: the new gunicorn on the old
    one's port (both listen with SO_REUSEPORT, gunicorn.conf.py's
    `listen_with_reuse_port`), once each of its workers says it is ready;
    when it was started, and when it was ready. Not a request to /readyz: the
    old gunicorn, on the same port, would answer it as well."""
    started = time.monotonic()
    new = Gunicorn(variant, old.port, f"app-{variant.worker_class}-new")
    variant.started.append(new)
    deadline = started + 120
    while len(ready_workers(new.log_path)) < bench.WORKERS:
        if new.process.poll() is not None or time.monotonic() > deadline:
            sys.exit(
                f"error: the new gunicorn's workers were not ready on port "
                f"{old.port} while the old one listened; see {new.log_path}"
            )
        await asyncio.sleep(0.05)
    return new, started, time.monotonic()


def ready_workers(log: Path) -> set[str]:
    """The pids of the workers whose "Worker ready" line is in `log`."""
    return set(re.findall(r"Worker ready \(pid: (\d+)\)", log.read_text()))


async def restart(
    variant: bench.Variant,
    old: Gunicorn,
    storm: Storm,
    cpu: CpuWatch,
    ready_new: tuple[Gunicorn, float, float] | None,
) -> dict:
    """SIGTERM to the old master; the times of each step, in seconds from it.

    With `ready_new` (--takeover overlap, a deploy in the order of the
    generated docs/production.md) the new gunicorn is already serving on the
    same port: the old one's clients come back to it at once. Without it
    (--takeover sequential, as a restarted unit or container does) the new
    gunicorn starts as soon as the old one has closed its listening sockets,
    and its clients wait for it to boot."""
    times: dict = {}
    storm.sigterm_at = time.monotonic()
    old.process.send_signal(signal.SIGTERM)
    if ready_new:
        new, started, ready = ready_new
        times["new_started"] = started - storm.sigterm_at
        times["new_ready"] = ready - storm.sigterm_at
    else:
        while not port_is_free(old.port):
            await asyncio.sleep(PORT_POLL_SECONDS)
        times["port_released"] = time.monotonic() - storm.sigterm_at
        new = Gunicorn(variant, old.port, f"app-{variant.worker_class}-new")
        times["new_started"] = time.monotonic() - storm.sigterm_at
        variant.started.append(new)
        cpu.watch("new gunicorn", new.pid, whole_life=True)

    async def ready() -> None:
        if ready_new:
            return
        if await asyncio.to_thread(new.first_answer, "/healthz", 120):
            times["new_answered"] = time.monotonic() - storm.sigterm_at

    async def old_exit() -> None:
        # wait4 rather than Popen.wait: its CPU figure counts the workers the
        # master waited for, to their end.
        _, status, usage = await asyncio.to_thread(os.wait4, old.pid, 0)
        times["old_exited"] = time.monotonic() - storm.sigterm_at
        old.process.returncode = os.waitstatus_to_exitcode(status)
        cpu.settle("old gunicorn", usage.ru_utime + usage.ru_stime)

    times["tasks"] = [asyncio.create_task(ready()), asyncio.create_task(old_exit())]
    return times


# --- the run ----------------------------------------------------------------------


def percentiles(values: list[float]) -> dict:
    share = loadtest.percentile
    figures = {
        "count": len(values),
        "p50": share(values, 0.5),
        "p90": share(values, 0.9),
        "p99": share(values, 0.99),
        "max": max(values) if values else None,
    }
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()}


def per_second(times: list[float], start: float) -> list[int]:
    """How many of `times` fell in each second from `start`."""
    counts = [0] * (math.floor(max(times, default=start) - start) + 1)
    for moment in times:
        counts[math.floor(moment - start)] += 1
    return counts


def peak_per_second(times: list[float]) -> int:
    """The most events in any one-second window."""
    ordered, peak, first = sorted(times), 0, 0
    for last, moment in enumerate(ordered):
        while moment - ordered[first] >= 1.0:
            first += 1
        peak = max(peak, last - first + 1)
    return peak


def listen_overflows() -> int | None:
    """Connections this machine dropped since it booted because an accept
    queue was full (TcpExt ListenOverflows, every listening socket
    together); None where /proc/net/netstat does not say."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return None
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            return int(table["ListenOverflows"]) if "ListenOverflows" in table else None
    return None


async def measure(variant, old, plan, arguments, progress, cpu: CpuWatch) -> dict:
    storm = Storm(plan, arguments.base, arguments.cap)
    storm.request = loadtest.upgrade_request(plan.url, plan.token)
    clients = [Client(index) for index in range(plan.connections)]
    report: dict = {"sockets": plan.connections}
    opening = time.monotonic()
    failures = await open_all(storm, clients, progress)
    report["open_seconds"] = round(time.monotonic() - opening, 3)
    report["opened"] = sum(1 for client in clients if client.ws is not None)
    report["open_failures"] = dict(failures.most_common())
    if failures:
        for client in clients:
            if client.ws is not None:
                client.ws.abort()
        return report

    ready_new = None
    if arguments.takeover == "overlap":
        ready_new = await start_first(variant, old)
        # From the SIGTERM on, as the old one's.
        cpu.watch("new gunicorn", ready_new[0].pid)
    lives = [asyncio.create_task(live(storm, client)) for client in clients]
    cpu.watch("old gunicorn", old.pid)
    overflows_before = listen_overflows()
    cpu.begin()
    times = await restart(variant, old, storm, cpu, ready_new)
    deadline = storm.sigterm_at + arguments.deadline
    while not storm.everyone_back.is_set() and time.monotonic() < deadline:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(storm.everyone_back.wait(), 1.0)
        progress(
            f"storm {time.monotonic() - storm.sigterm_at:5.1f} s: "
            f"{sum(storm.close_codes.values())} closed, {storm.back_now} back, "
            f"{storm.attempts} attempts, {sum(storm.failed_attempts.values())} "
            "refused or failed",
            force=True,
        )
    ended = time.monotonic()
    used = cpu.end()
    overflows_after = listen_overflows()
    for task in lives:
        task.cancel()
    for outcome in await asyncio.gather(*lives, return_exceptions=True):
        if not isinstance(outcome, asyncio.CancelledError):
            raise outcome  # a bug here, not a failure of the service
    # The new gunicorn answers /healthz long before a full storm ends.
    ready, exited = times.pop("tasks")
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(ready), 30)
    if exited.done():
        exited.result()

    sigterm = storm.sigterm_at
    back = [client for client in clients if client.back]
    missing = Counter()
    for client in clients:
        if client.back:
            continue
        if client.closed_at is None:
            missing["not closed by the server"] += 1
        elif client.last_failure:
            missing[f"last attempt: {client.last_failure}"] += 1
        else:
            missing["no attempt finished"] += 1
    all_back = storm.everyone_back.is_set()
    first_closes = [c.closed_at - sigterm for c in clients if c.closed_at]
    report.update(
        {
            "all_back": all_back,
            "all_back_seconds": (
                round(storm.all_back_at - sigterm, 3) if all_back else None
            ),
            "back": len(back),
            "failed": plan.connections - len(back),
            "failed_by_reason": dict(missing.most_common()),
            "deadline_seconds": arguments.deadline,
            "close_codes": {
                str(code): count for code, count in sorted(storm.close_codes.items())
            },
            "all_1001": storm.close_codes == Counter({1001: plan.connections}),
            "last_close_seconds": round(max(first_closes), 3) if first_closes else None,
            "closed_again": {
                str(code): count for code, count in sorted(storm.closed_again.items())
            },
            "back_seconds": percentiles([c.back_at - sigterm for c in back]),
            "back_after_close_seconds": percentiles(
                [c.back_at - c.closed_at for c in back]
            ),
            "attempts": storm.attempts,
            "attempts_per_client": percentiles(
                [float(c.attempts) for c in clients if c.closed_at]
            ),
            "failed_attempts": sum(storm.failed_attempts.values()),
            "failed_attempts_by_reason": dict(storm.failed_attempts.most_common()),
            "handshakes": len(storm.handshakes),
            "peak_handshakes_per_second": peak_per_second(storm.handshakes),
            "peak_attempts_per_second": peak_per_second(storm.attempt_times),
            # Handshakes a full accept queue dropped (nginx's or gunicorn's),
            # each client of them waiting for TCP to try again.
            "listen_overflows": (
                overflows_after - overflows_before
                if None not in (overflows_before, overflows_after)
                else None
            ),
            # Second by second from SIGTERM, to see the storm's shape.
            "by_second": {
                "attempts": per_second(storm.attempt_times, sigterm),
                "handshakes": per_second(storm.handshakes, sigterm),
                "back": per_second([c.back_at for c in back], sigterm),
            },
            "gunicorn": {name: round(value, 3) for name, value in times.items()},
            "client_cpu_share": round(
                used["cpu_seconds"]["client"] / max(ended - sigterm, 1e-9), 3
            ),
            # CPU seconds from SIGTERM to the end of the storm, by part.
            "cpu": used,
        }
    )
    # Dropped rather than closed: a closing handshake may wait up to
    # --timeout twice per socket on a server still swamped by the storm, and
    # the servers are stopped next anyway.
    for client in clients:
        if client.ws is not None:
            client.ws.abort()
    return report


def print_summary(report: dict) -> None:
    if report.get("open_failures"):
        reasons = ", ".join(f"{k}: {v}" for k, v in report["open_failures"].items())
        print(
            f"opened {report['opened']} of {report['sockets']} sockets before the "
            f"storm ({reasons}); no storm measured"
        )
        return
    gunicorn = report["gunicorn"]
    back = report["back_seconds"]
    when = (
        f"all back and echoed {report['all_back_seconds']:.2f} s after SIGTERM"
        if report["all_back"]
        else f"{report['failed']} not back within {report['deadline_seconds']} s"
    )
    codes = ", ".join(f"{k}: {v}" for k, v in report["close_codes"].items())
    lines = [
        f"storm       {report['sockets']} {report['worker_class']} sockets through "
        f"nginx: {when}",
        f"closes      {codes or 'none'}"
        + ("" if report["all_1001"] else "  (not every socket got 1001)"),
        f"gunicorn    {report['takeover']}: "
        + (
            f"port free {gunicorn['port_released']:.2f} s, "
            if "port_released" in gunicorn
            else ""
        )
        + f"new one started {gunicorn['new_started']:.2f} s, "
        + (
            f"ready {gunicorn['new_ready']:.2f} s, "
            if "new_ready" in gunicorn
            else f"answered {gunicorn.get('new_answered', math.nan):.2f} s, "
        )
        + "old one exited "
        f"{gunicorn.get('old_exited', math.nan):.2f} s after SIGTERM",
        f"back        s after SIGTERM: p50 {back['p50']}  p90 {back['p90']}  "
        f"p99 {back['p99']}  max {back['max']}",
        f"attempts    {report['attempts']} (max "
        f"{report['attempts_per_client']['max'] or 0:.0f} per client), "
        f"{report['failed_attempts']} refused or failed; "
        f"peak {report['peak_attempts_per_second']} attempts/s, "
        f"{report['peak_handshakes_per_second']} handshakes/s",
        f"backoff     full jitter, base {report['backoff']['base']} s, "
        f"cap {report['backoff']['cap']} s",
    ]
    if report.get("listen_overflows") is not None:
        lines.append(
            f"queues      {report['listen_overflows']} connections dropped by a full "
            f"accept queue (net.core.somaxconn {report.get('somaxconn')})"
        )
    if report["failed_attempts_by_reason"]:
        reasons = report["failed_attempts_by_reason"].items()
        lines.append("refusals    " + ", ".join(f"{k}: {v}" for k, v in reasons))
    if report["failed_by_reason"]:
        reasons = report["failed_by_reason"].items()
        lines.append("not back    " + ", ".join(f"{k}: {v}" for k, v in reasons))
    if report["closed_again"]:
        codes = ", ".join(f"{k}: {v}" for k, v in report["closed_again"].items())
        lines.append(f"closed again before all were back: {codes}")
    cpu = report["cpu"]
    parts = ", ".join(
        f"{name} {seconds:.1f}"
        for name, seconds in cpu["cpu_seconds"].items()
        if name != "machine"
    )
    lines.append(
        f"cpu         {cpu['cpu_seconds']['machine']:.1f} s of the machine's in the "
        f"storm's {cpu['seconds']:.1f} s: {parts}"
    )
    waits = ", ".join(
        f"{name} {seconds:.1f}"
        for name, seconds in cpu["waited_for_cpu_seconds"].items()
    )
    lines.append(f"waited      for a CPU, s: {waits}")
    lines.append(
        f"client      {report['client_cpu_share']:.0%} of a core during the storm; "
        f"load average {report['load_before']:.2f} before, "
        f"{report['load_after']:.2f} after, on {report['cores']} cores"
    )
    print("\n".join(lines))


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bake", type=Path, help="a bake's folder, with its .venv")
    parser.add_argument("-n", "--connections", type=loadtest.positive(int), default=100)
    parser.add_argument(
        "--base", type=loadtest.positive(float), default=0.5, help="backoff base, s"
    )
    parser.add_argument(
        "--cap", type=loadtest.positive(float), default=30, help="backoff cap, s"
    )
    parser.add_argument(
        "--deadline",
        type=loadtest.positive(float),
        default=120,
        help="seconds after SIGTERM by which every client must be back",
    )
    parser.add_argument(
        "--rate",
        type=loadtest.positive(float),
        default=1000,
        help="new sockets per second before the storm",
    )
    # At most the 100 a worker takes on at once (HANDSHAKES_AT_ONCE), which
    # refuses the next with 503.
    parser.add_argument(
        "--concurrency",
        type=loadtest.positive(int),
        default=100,
        help="handshakes in flight at once before the storm",
    )
    # A browser waits far longer than this for a handshake. A client that
    # gives up sooner than the server's queue drains makes the server answer
    # clients that have left, and the storm feeds itself.
    parser.add_argument(
        "--timeout",
        type=loadtest.positive(float),
        default=30,
        help="seconds per step: connect and handshake, then the echo",
    )
    parser.add_argument(
        "--takeover",
        choices=("overlap", "sequential"),
        default="overlap",
        help="overlap: the new gunicorn starts and answers before the old one "
        "gets SIGTERM (the documented deploy); sequential: it starts once the "
        "old one has let go of the port (a restarted unit or container)",
    )
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.add_argument("--keep", action="store_true", help="keep the logs' folder")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    arguments = parse_arguments(argv)
    if not bench.find_nginx():
        sys.exit("error: nginx is needed (Debian: nginx)")
    root = arguments.bake.resolve()
    baked = existing_bake(root)
    n = arguments.connections
    # For this process and the servers it starts (run.py's), then what the
    # client needs: a client's old socket is closed before it tries again.
    bench.raise_open_file_limit()
    loadtest.raise_open_file_limit(n + loadtest.SPARE_FILE_DESCRIPTORS)
    somaxconn_before = bench.raise_somaxconn()
    workdir = Path(tempfile.mkdtemp(prefix="storm-"))
    last_line = [0.0]

    def progress(line: str, force: bool = False) -> None:
        now = time.monotonic()
        if not arguments.quiet and (force or now - last_line[0] > 1):
            last_line[0] = now
            print(line, file=sys.stderr, flush=True)

    report: dict = {
        "bake": str(root),
        "worker_class": baked.worker_class,
        "workers": bench.WORKERS,
        "takeover": arguments.takeover,
        "backoff": {
            "kind": "full jitter",
            "base": arguments.base,
            "cap": arguments.cap,
        },
        "cores": os.cpu_count(),
        "load_before": os.getloadavg()[0],
        "somaxconn": bench.somaxconn(),
    }
    with contextlib.ExitStack() as stack:
        stack.callback(bench.restore_somaxconn, somaxconn_before)
        if not arguments.keep:
            stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        redis_url = "redis://127.0.0.1:6379/0"  # the default; memory bakes ignore it
        cpu = CpuWatch()
        if baked.broadcast == "redis":
            redis = bench.start_redis(workdir)
            cpu.watch("redis", redis.pid)
            stack.callback(redis.stop)
            redis_url = f"redis://127.0.0.1:{redis.port}/0"
        variant = bench.Variant(baked, redis_url, workdir)
        variant.started = []
        # Stopped after nginx (an ExitStack unwinds last to first): every
        # gunicorn that ran, old and new.
        stack.callback(lambda: [server.stop() for server in variant.started])
        old = Gunicorn(variant, bench.free_port(), f"app-{baked.worker_class}-old")
        variant.started.append(old)
        old.wait_until_listening("/healthz")
        nginx = variant.nginx(old)
        cpu.watch("nginx", nginx.pid)
        stack.callback(nginx.stop)
        url = f"ws://127.0.0.1:{nginx.port}{ROUTE}"
        token = loadtest.fetch_token(
            loadtest.token_url_for(url), bench.USER, bench.PASSWORD, arguments.timeout
        )
        plan = loadtest.Plan(
            url=url,
            connections=n,
            rate=arguments.rate,
            concurrency=arguments.concurrency,
            hold=0,
            traffic="idle",
            compression=False,
            message_size=32,
            timeout=arguments.timeout,
            token=token,
            # Room for the old sockets' ports too, while they close.
            source_addresses=loadtest.source_addresses(url, 2 * n, None),
            stop_on_failure=False,
            warmup=0,
            watched={},
        )
        report["url"] = url
        report.update(
            asyncio.run(measure(variant, old, plan, arguments, progress, cpu))
        )
        report["load_after"] = os.getloadavg()[0]
        if arguments.keep:
            report["logs"] = str(variant.logs)
    print_summary(report)
    if arguments.json:
        arguments.json.write_text(json.dumps(report, indent=2) + "\n")
    ok = not report.get("open_failures") and report.get("all_back")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
