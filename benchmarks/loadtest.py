"""Open many authenticated WebSockets, check each with an echo, hold them, report.

The client benchmarks/run.py measures with, run by each bake's own venv python:

    .venv/bin/python benchmarks/loadtest.py ws://127.0.0.1:8080/ws/echo \\
        -n 10000 --hold 60 --user you@example.com --server-pid "$(cat gunicorn.pid)"

A generated project ships a short tool for its owner instead
(scripts/loadtest.py: open, hold, echo once, memory by pid); this one adds what
the benchmarks report: latency percentiles, echo traffic during the hold,
permessage-deflate, the memory and CPU of a process tree (gunicorn, nginx), a
warm-up, the first failure, many source addresses, a JSON report.

It asks /auth/token once for a bearer token (HTTP Basic, `--user`, and the
password from `--password`, $LOADTEST_PASSWORD or a prompt; or give `--token`),
then ramps up to N sockets at `--rate` per second, sends each one message and
waits for it to come back, holds them all for `--hold` seconds (idle, or
echoing back to back with `--traffic echo`), checks each once more and closes
them. It reports how many were opened and held, the failures by reason (HTTP
status, close code, timeout), handshake and echo latency percentiles, and the
server's memory per socket. The exit status is 1 when any socket failed.

With `--handshakes` it measures the rate of handshakes instead: N sockets,
`--concurrency` at a time, each opened (TCP, then the upgrade request with the
token) and closed at once with 1000, the next one started as soon as the
server has closed the connection. It reports handshakes per second, their
latency (connect to 101), and the CPU the server and the proxy spent per
handshake (from /proc, steadier than a rate on a shared machine). That client
is raw sockets on asyncio with one prebuilt request, no WebSocket library, so
that its own share of the cores stays small.

Memory per socket: the resident memory (VmRSS in /proc/PID/status) of the
server's processes, summed, once before the first socket opens and once at the
end of the hold while every socket is open, divided by the sockets held. The
processes are those given by `--server-pid` (the gunicorn master: its workers
are counted with it), or the one process whose command line contains
`--server-match`, with its own (a text that more than one separate process
contains is refused: name the master by its PID); `--proxy-pid` /
`--proxy-match` report nginx the same way. When the processes change during
the run (a worker restarted), the figures are not comparable, and the report
says so instead of giving them.
The CPU they used during the hold is reported too, as a share of one core,
with the client's own: a client near 100% means the client, not the server,
set the pace. Measure a freshly started server (`--warmup 200` first opens
and closes a few sockets, so that each worker's one-time allocations are not
counted): memory that closed sockets freed stays with the process for reuse,
so a second run on the same server grows less. It reads
/proc, so the server must run on this machine, readable by this user.

The service's own figures: with `--metrics-url` (the generated service's
GET /metrics, on gunicorn's port: nginx refuses it) it reads them before the
ramp and at the end of the hold, and reports the sockets the workers admit
together, the sockets they hold then, and the handshakes of the run by
outcome, which names the cause of each refusal the client saw as an HTTP
status (benchmarks/service_metrics.py; this needs prometheus-client, one of
a bake's dependencies). The reads are outside the timed and measured spans.

Many sockets: the open-file limit is raised to what N needs (up to the hard
limit; `ulimit -Hn` as root raises that); where the hard limit is lower and
cannot be raised, the sockets are shared among several client processes
(`--processes`, by default as many as the limit needs), which ramp, hold and
check together while this one samples the server; past the ephemeral port
range (/proc/sys/net/ipv4/ip_local_port_range, about 28,000
ports per source and destination address) the sockets leave from several
loopback addresses (127.0.0.1, 127.0.0.2, ...), which only works against a
server on loopback. Standard library and `websockets` (a bake's dev extra) only,
and prometheus-client with `--metrics-url`.
"""

import argparse
import asyncio
import base64
import errno
import getpass
import ipaddress
import json
import math
import multiprocessing
import os
import resource
import socket
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from contextlib import suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

# Descriptors the process needs besides one per socket (stdio, the event loop).
SPARE_FILE_DESCRIPTORS = 256
# Share of the ephemeral port range used per source address, leaving room for
# every other connection this machine makes meanwhile.
PORT_RANGE_SHARE = 0.9
# (host, port) -> the address the sockets connect to (connected_socket).
RESOLVED: dict[tuple[str, int], tuple] = {}
# How often the progress bar redraws, on a terminal and in a log.
REDRAW_SECONDS = {True: 0.2, False: 5.0}


@dataclass
class Plan:
    url: str
    connections: int
    rate: float
    concurrency: int
    hold: float
    traffic: str
    compression: bool
    message_size: int
    timeout: float
    token: str | None
    source_addresses: list[str]
    stop_on_failure: bool
    warmup: int
    # Process groups whose memory and CPU are reported: "server", "proxy".
    watched: dict[str, "Watched"]
    # The service's GET /metrics, read before the ramp and after the hold:
    # one per instance when nginx spreads the sockets over several.
    metrics_urls: list[str] = field(default_factory=list)


@dataclass
class Results:
    asked: int = 0
    opened: int = 0
    held: int = 0
    failures: Counter = field(default_factory=Counter)
    # Sockets open when the first failure happened (None: nothing failed).
    open_at_first_failure: int | None = None
    # When each socket opened and when the first failure happened (monotonic
    # clock, which processes share): with several client processes, the
    # sockets open at the first failure are counted from these.
    opened_at: list[float] = field(default_factory=list)
    first_failure_at: float | None = None
    handshake_ms: list[float] = field(default_factory=list)
    echo_ms: list[float] = field(default_factory=list)
    traffic_ms: list[float] = field(default_factory=list)
    ramp_seconds: float = 0.0
    hold_seconds: float = 0.0
    # Per watched group: a Sample before the ramp, at the start and the end
    # of the hold.
    before: dict[str, "Sample"] = field(default_factory=dict)
    hold_start: dict[str, "Sample"] = field(default_factory=dict)
    hold_end: dict[str, "Sample"] = field(default_factory=dict)
    client_cpu_seconds: float = 0.0
    open_now: int = 0
    # The service's figures (service_metrics.read), before the ramp and at
    # the end of the hold; or why they could not be read.
    metrics_before: dict[str, dict] = field(default_factory=dict)
    metrics_held: dict[str, dict] = field(default_factory=dict)
    metrics_error: str | None = None

    def fail(self, reason: str) -> None:
        if self.open_at_first_failure is None:
            self.open_at_first_failure = self.open_now
            self.first_failure_at = time.monotonic()
        self.failures[reason] += 1

    def add(self, share: "Results") -> None:
        """Count in what one client process of several saw."""
        self.opened += share.opened
        self.held += share.held
        self.failures.update(share.failures)
        self.handshake_ms += share.handshake_ms
        self.echo_ms += share.echo_ms
        self.traffic_ms += share.traffic_ms
        self.opened_at += share.opened_at
        self.client_cpu_seconds += share.client_cpu_seconds
        if share.first_failure_at is not None and (
            self.first_failure_at is None
            or share.first_failure_at < self.first_failure_at
        ):
            self.first_failure_at = share.first_failure_at
        if self.first_failure_at is not None:
            self.open_at_first_failure = sum(
                1 for moment in self.opened_at if moment < self.first_failure_at
            )


# --- the server's memory and CPU, from /proc ------------------------------------


@dataclass
class Watched:
    """Processes given by PID, their descendants with them."""

    pids: list[int]


@dataclass
class Sample:
    pids: tuple[int, ...]
    resident_bytes: int
    cpu_seconds: float

    @property
    def processes(self) -> int:
        return len(self.pids)


def process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) for every process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            raw = (entry / "cmdline").read_bytes()
        except OSError:  # the process ended while we looked
            continue
        # The command name in parentheses may hold spaces: split after it.
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        table[int(entry.name)] = (parent, raw.replace(b"\0", b" ").decode())
    return table


def watched_processes(watched: Watched) -> list[int]:
    table = process_table()
    given = {pid for pid in watched.pids if pid in table}
    return sorted(with_descendants(given, table))


def with_descendants(pids: set[int], table: dict[int, tuple[int, str]]) -> set[int]:
    chosen = set(pids)
    # A few passes cover gunicorn's master -> workers.
    for _ in range(8):
        children = {pid for pid, (parent, _) in table.items() if parent in chosen}
        if children <= chosen:
            break
        chosen |= children
    return chosen


def ancestors(pid: int, table: dict[int, tuple[int, str]]) -> set[int]:
    found = set()
    while pid in table and pid not in found:
        found.add(pid)
        pid = table[pid][0]
    return found


def matching_process(name: str, text: str) -> int:
    """The one process tree whose command lines contain `text`: its top
    process. Exits with one line when there is none or more than one."""
    table = process_table()
    # This tool's own command line, and the shell's that started it, hold the
    # text too.
    ours = ancestors(os.getpid(), table)
    matched = {pid for pid, (_, command) in table.items() if text in command} - ours
    # A gunicorn worker has its master's command line: count the master only.
    tops = sorted(
        pid for pid in matched if not (ancestors(pid, table) - {pid}) & matched
    )
    if not tops:
        sys.exit(f"error: --{name}-match {text!r} matches no running process")
    if len(tops) > 1:
        listed = ", ".join(map(str, tops))
        sys.exit(
            f"error: --{name}-match {text!r} matches {len(tops)} separate "
            f"processes (pids {listed}); give the one to measure with --{name}-pid"
        )
    return tops[0]


def sample(watched: Watched) -> Sample:
    """Resident memory (VmRSS) and CPU time (user + system) summed over the
    processes; one that is gone counts 0."""
    pids = watched_processes(watched)
    resident, ticks = 0, 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                resident += int(line.split()[1]) * 1024
        fields = stat.rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return Sample(tuple(pids), resident, ticks / os.sysconf("SC_CLK_TCK"))


def sample_all(plan: Plan) -> dict[str, Sample]:
    return {name: sample(watched) for name, watched in plan.watched.items()}


# --- the service's own figures, from its /metrics -------------------------------


def read_metrics(url: str) -> dict:
    # Imported here: prometheus-client is needed with --metrics-url only.
    import service_metrics

    return service_metrics.read(url)


def check_metrics_url(url: str) -> None:
    """Exit with one line when the figures cannot be read from `url`."""
    try:
        read_metrics(url)
    except ImportError:
        sys.exit("error: --metrics-url needs prometheus-client (a bake's python)")
    except (OSError, ValueError) as error:
        sys.exit(f"error: cannot read {url}: {error}")


def read_metrics_into(results: Results, url: str, moment: str) -> None:
    """Read the figures `before` the ramp or `held` at the end of the hold; a
    failed read is reported, and the client's own figures still are."""
    try:
        getattr(results, f"metrics_{moment}")[url] = read_metrics(url)
    except (OSError, ValueError) as error:
        results.metrics_error = f"{url} ({moment}): {error}"


# --- the limits of one client process ----------------------------------------


def open_file_limit(needed: int) -> int:
    """Raise this process's open-file limit toward `needed`, the hard limit
    too where it may (as root); the limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return needed
    try:
        high = hard if hard == resource.RLIM_INFINITY else max(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, high))
    except (ValueError, OSError):  # only root may raise the hard limit
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    limit, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return needed if limit == resource.RLIM_INFINITY else limit


def raise_open_file_limit(needed: int) -> None:
    limit = open_file_limit(needed)
    if limit < needed:
        sys.exit(
            f"error: {needed} open files are needed and the limit is {limit}; "
            f"raise it first (as root: ulimit -Hn {needed}; ulimit -n {needed})"
        )


def ephemeral_port_count() -> int:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(high) - int(low) + 1
    except (OSError, ValueError):
        return 28232  # Linux's default range, 32768-60999


def source_addresses(url: str, connections: int, wanted: int | None) -> list[str]:
    """The loopback addresses the sockets leave from; [] lets the kernel choose."""
    needed = math.ceil(connections / (ephemeral_port_count() * PORT_RANGE_SHARE))
    count = wanted or needed
    host = urlsplit(url).hostname or ""
    try:
        loopback = ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        loopback = False
    if count <= 1 and not wanted:
        return []
    if not loopback:
        if wanted:
            sys.exit("error: --source-addresses needs a server on 127.0.0.0/8")
        print(
            f"warning: {connections} sockets may exhaust the ephemeral ports of "
            "one address; run several clients",
            file=sys.stderr,
        )
        return []
    if count > 254:
        sys.exit("error: more than 254 source addresses; lower -n")
    return [f"127.0.0.{number}" for number in range(1, count + 1)]


# --- authentication ------------------------------------------------------------


def token_url_for(ws_url: str) -> str:
    parts = urlsplit(ws_url)
    scheme = {"ws": "http", "wss": "https"}[parts.scheme]
    return urlunsplit((scheme, parts.netloc, "/auth/token", "", ""))


def fetch_token(token_url: str, user: str, password: str, timeout: float) -> str:
    """One bearer token from POST /auth/token with HTTP Basic."""
    credentials = base64.b64encode(f"{user}:{password}".encode()).decode()
    # token_url_for made the URL http or https, never file: or another scheme.
    request = urllib.request.Request(  # noqa: S310
        token_url, method="POST", headers={"Authorization": f"Basic {credentials}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return json.load(response)["token"]
    except urllib.error.HTTPError as error:
        sys.exit(f"error: {token_url} answered {error.code}; check --user and password")
    except (urllib.error.URLError, OSError) as error:
        sys.exit(f"error: cannot reach {token_url}: {error}")


# --- progress ------------------------------------------------------------------


class Progress:
    """One line on stderr: a bar on a terminal, a log line now and then elsewhere."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.terminal = sys.stderr.isatty()
        self._drawn = 0.0

    def show(
        self, label: str, done: int, total: int, detail: str = "", force=False
    ) -> None:
        now = time.monotonic()
        if not self.enabled:
            return
        if not force and now - self._drawn < REDRAW_SECONDS[self.terminal]:
            return
        self._drawn = now
        width = 30
        filled = width * done // max(total, 1)
        bar = "#" * filled + "." * (width - filled)
        line = f"{label:<6} [{bar}] {done}/{total} {detail}"
        if self.terminal:
            print(f"\r{line:<100}", end="", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)

    def done(self) -> None:
        if self.enabled and self.terminal:
            print(file=sys.stderr, flush=True)
        self._drawn = 0.0


# --- the sockets ---------------------------------------------------------------


class ConnectionClosedBy(Exception):
    """The server closed an idle socket with this code."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def failure_reason(error: BaseException, step: str) -> str:
    """A short, countable name for what went wrong."""
    if isinstance(error, ConnectionClosedBy):
        return f"closed {error.code} ({step})"
    if isinstance(error, InvalidStatus):
        return f"HTTP {error.response.status_code}"
    if isinstance(error, HandshakeRefused):
        return f"HTTP {error.status}"
    if isinstance(error, ConnectionClosed):
        code = error.rcvd.code if error.rcvd else 1006
        return f"closed {code} ({step})"
    if isinstance(error, TimeoutError):
        return f"timeout ({step})"
    if isinstance(error, OSError) and error.errno:
        return f"{errno.errorcode.get(error.errno, error.errno)} ({step})"
    return f"{type(error).__name__} ({step})"


async def connected_socket(plan: Plan, index: int) -> socket.socket:
    """A TCP connection to the URL's host, from the next source address when
    there are several."""
    parts = urlsplit(plan.url)
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    loop = asyncio.get_running_loop()
    if (parts.hostname, port) not in RESOLVED:
        # Once per run: asyncio resolves in a thread pool, a hand-off that
        # thousands of sockets opened at once would each pay.
        RESOLVED[parts.hostname, port] = (
            await loop.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
        )[0]
    family, kind, protocol, _, address = RESOLVED[parts.hostname, port]
    sock = socket.socket(family, kind, protocol)
    try:
        if plan.source_addresses:
            # Pick the port at connect(), per destination, not at bind().
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((plan.source_addresses[index % len(plan.source_addresses)], 0))
        sock.setblocking(False)
        await loop.sock_connect(sock, address)
    except BaseException:
        sock.close()
        raise
    return sock


async def open_socket(plan: Plan, index: int) -> ClientConnection:
    """TCP, then the WebSocket handshake."""
    sock = await connected_socket(plan, index)
    headers = {"Authorization": f"Bearer {plan.token}"} if plan.token else {}
    return await connect(
        plan.url,
        sock=sock,
        additional_headers=headers,
        compression="deflate" if plan.compression else None,
        open_timeout=plan.timeout,
        close_timeout=plan.timeout,
        # The server pings; the client only answers.
        ping_interval=None,
        max_size=None,
    )


async def echo_once(ws: ClientConnection, message: str, timeout: float) -> float:
    """Send `message`, wait for it to come back; the round trip in ms."""
    started = time.perf_counter()
    await ws.send(message)
    reply = await asyncio.wait_for(ws.recv(), timeout)
    if reply != message:
        raise ValueError("echo mismatch")
    return (time.perf_counter() - started) * 1000


async def open_and_check(
    plan: Plan, index: int, results: Results
) -> ClientConnection | None:
    step = "handshake"
    ws = None
    try:
        started = time.perf_counter()
        ws = await asyncio.wait_for(open_socket(plan, index), plan.timeout)
        results.handshake_ms.append((time.perf_counter() - started) * 1000)
        step = "echo"
        results.echo_ms.append(await echo_once(ws, f"hello {index}", plan.timeout))
    except Exception as error:
        results.fail(failure_reason(error, step))
        if ws is not None:
            await close_quietly(ws)
        return None
    results.opened += 1
    results.open_now += 1
    results.opened_at.append(time.monotonic())
    return ws


async def hold_socket(
    plan: Plan, ws: ClientConnection, until: float, results: Results
) -> bool:
    """Keep the socket until `until` (echoing, with --traffic echo); False
    when it closed or failed on the way."""
    try:
        if plan.traffic == "idle":
            remaining = until - time.monotonic()
            if remaining > 0:
                try:
                    await asyncio.wait_for(ws.wait_closed(), remaining)
                except TimeoutError:
                    return True  # still open at the end of the hold: held
                code = ws.close_code or 1006  # 1006: no close frame
                raise ConnectionClosedBy(code)
            return True
        message = "x" * plan.message_size
        while time.monotonic() < until:
            results.traffic_ms.append(await echo_once(ws, message, plan.timeout))
        return True
    except Exception as error:
        results.open_now -= 1
        results.fail(failure_reason(error, "hold"))
        return False


async def close_quietly(ws: ClientConnection) -> None:
    # A socket that is already gone has nothing left to close.
    with suppress(Exception):
        await ws.close()


async def gather_limited(coroutines, limit: int) -> list:
    """Run the coroutines with at most `limit` at once; results in order."""
    gate = asyncio.Semaphore(limit)

    async def run(coroutine):
        async with gate:
            return await coroutine

    return await asyncio.gather(*(run(coroutine) for coroutine in coroutines))


async def warm_up(plan: Plan) -> None:
    """Open, check and close a few sockets, so that what a worker allocates
    once (imports, pools, the first request) is not counted per socket."""
    scratch = Results()

    async def once(index: int) -> None:
        ws = await open_and_check(plan, index, scratch)
        if ws is not None:
            await close_quietly(ws)

    await gather_limited((once(i) for i in range(plan.warmup)), plan.concurrency)
    await asyncio.sleep(1)


async def measure_before(plan: Plan, results: Results) -> None:
    """The warm-up, then what the server holds before the first socket."""
    if plan.warmup:
        await warm_up(plan)
    # Before the memory is sampled: what the read allocates in a worker is
    # then not counted per socket.
    for url in plan.metrics_urls:
        read_metrics_into(results, url, "before")
    results.before = sample_all(plan)


async def ramp(
    plan: Plan, indices: range, results: Results, progress: Progress, stop
) -> list[ClientConnection]:
    """Start one socket every 1/rate s, at most `concurrency` in flight, each
    bounded by `timeout`; no more once `stop()` says so. The sockets that
    opened and answered."""
    gate = asyncio.Semaphore(plan.concurrency)
    tasks = []
    ramp_started = time.monotonic()

    async def start(index: int) -> ClientConnection | None:
        try:
            return await open_and_check(plan, index, results)
        finally:
            gate.release()

    for number, index in enumerate(indices):
        delay = ramp_started + number / plan.rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await gate.acquire()
        # After the wait: a socket in flight meanwhile may have failed.
        if stop():
            gate.release()
            break
        tasks.append(asyncio.create_task(start(index)))
        progress.show(
            "ramp",
            results.opened,
            len(indices),
            f"failed {sum(results.failures.values())}",
        )
    sockets = [ws for ws in await asyncio.gather(*tasks) if ws is not None]
    progress.show(
        "ramp",
        results.opened,
        len(indices),
        f"failed {sum(results.failures.values())}",
        force=True,
    )
    progress.done()
    return sockets


async def hold_all(
    plan: Plan,
    sockets: list[ClientConnection],
    until: float,
    results: Results,
    progress: Progress,
) -> list[ClientConnection]:
    """Hold the sockets until `until`; those still open then."""
    holders = [
        asyncio.create_task(hold_socket(plan, ws, until, results)) for ws in sockets
    ]
    hold_started = time.monotonic()
    hold = until - hold_started
    while not all(task.done() for task in holders):
        left = max(0.0, until - time.monotonic())
        progress.show(
            "hold", round(hold - left), round(hold), f"s, {results.open_now} open"
        )
        await asyncio.wait(holders, timeout=min(1.0, left + plan.timeout))
        if time.monotonic() > until + 2 * plan.timeout:
            break  # every step is bounded by timeout; this one did not finish
    progress.show(
        "hold", round(hold), round(hold), f"s, {results.open_now} open", force=True
    )
    progress.done()
    for task in holders:
        if not task.done():
            task.cancel()
    return [
        ws
        for ws, task in zip(sockets, holders, strict=True)
        if task.done() and not task.cancelled() and task.result()
    ]


async def check_and_close(
    plan: Plan,
    sockets: list[ClientConnection],
    still_open: list[ClientConnection],
    results: Results,
) -> None:
    """One more echo each: a socket counts as held only if it still answers."""

    async def check(index: int, ws: ClientConnection) -> bool:
        try:
            await echo_once(ws, f"still here {index}", plan.timeout)
            return True
        except Exception as error:
            results.fail(failure_reason(error, "echo after hold"))
            return False

    checks = await gather_limited(
        (check(i, ws) for i, ws in enumerate(still_open)), plan.concurrency
    )
    results.held = sum(checks)
    await gather_limited((close_quietly(ws) for ws in sockets), plan.concurrency)


async def run(plan: Plan, progress: Progress) -> Results:
    results = Results(asked=plan.connections)
    await measure_before(plan, results)
    ramp_started = time.monotonic()
    sockets = await ramp(
        plan,
        range(plan.connections),
        results,
        progress,
        stop=lambda: plan.stop_on_failure and bool(results.failures),
    )
    results.ramp_seconds = time.monotonic() - ramp_started

    # Hold them all, then measure while every one is still open.
    results.hold_start = sample_all(plan)
    client_cpu = time.process_time()
    hold_started = time.monotonic()
    still_open = await hold_all(
        plan, sockets, hold_started + plan.hold, results, progress
    )
    results.hold_seconds = time.monotonic() - hold_started
    results.hold_end = sample_all(plan)
    results.client_cpu_seconds = time.process_time() - client_cpu
    if results.metrics_before:
        for url in plan.metrics_urls:
            read_metrics_into(results, url, "held")
    await check_and_close(plan, sockets, still_open, results)
    return results


# --- several client processes --------------------------------------------------


def client_processes(connections: int, wanted: int | None) -> int:
    """How many processes the sockets need: raise the open-file limit toward
    what one process would need, then share them among as many as the limit
    allows (each inherits it)."""
    limit = open_file_limit(connections + SPARE_FILE_DESCRIPTORS)
    usable = limit - SPARE_FILE_DESCRIPTORS
    count = wanted or max(1, math.ceil(connections / max(usable, 1)))
    if count > connections:
        sys.exit(
            f"error: {count} processes for {connections} sockets; lower --processes"
        )
    if usable < math.ceil(connections / count):
        sys.exit(
            f"error: {math.ceil(connections / count)} sockets per process and "
            f"{limit} open files each; raise --processes"
        )
    return count


def client_process(plan: Plan, indices: range, channel, failed) -> None:
    """One of several client processes: its share of the sockets, with the
    whole run's steps, each started by the coordinating process."""
    results = Results(asked=len(indices))

    async def main() -> None:
        loop = asyncio.get_running_loop()

        def stop() -> bool:
            if not plan.stop_on_failure:
                return False
            if results.failures:
                failed.set()  # and the other processes stop ramping too
            return failed.is_set()

        sockets = await ramp(plan, indices, results, Progress(False), stop)
        channel.send("ramped")
        # While waiting, the loop keeps answering the server's pings.
        until = await loop.run_in_executor(None, channel.recv)
        client_cpu = time.process_time()
        still_open = await hold_all(plan, sockets, until, results, Progress(False))
        results.client_cpu_seconds = time.process_time() - client_cpu
        channel.send("held")
        await loop.run_in_executor(None, channel.recv)
        await check_and_close(plan, sockets, still_open, results)
        channel.send(results)

    asyncio.run(main())


def run_in_processes(plan: Plan, progress: Progress, count: int) -> Results:
    """run(), its sockets shared among `count` client processes while this
    one samples the server between their steps."""
    results = Results(asked=plan.connections)
    asyncio.run(measure_before(plan, results))
    # Forked (nothing runs in this process then): the children share the
    # plan as it is, and `failed` stops every ramp at the first failure.
    context = multiprocessing.get_context("fork")
    failed = context.Event()
    share = replace(
        plan,
        rate=plan.rate / count,
        concurrency=max(1, math.ceil(plan.concurrency / count)),
    )
    processes, channels = [], []
    for number in range(count):
        channel, theirs = context.Pipe()
        process = context.Process(
            target=client_process,
            args=(share, range(number, plan.connections, count), theirs, failed),
            name=f"loadtest-client-{number + 1}",
            daemon=True,
        )
        process.start()
        theirs.close()
        processes.append(process)
        channels.append(channel)

    def step(expected: str, label: str) -> list:
        """Every process's next message; a process that died is an error."""
        messages = []
        for number, process in enumerate(processes):
            try:
                message = channels[number].recv()
            except EOFError:
                process.join(5)
                sys.exit(
                    f"error: client process {number + 1} of {count} ended "
                    f"(exit status {process.exitcode}) before it was {label}"
                )
            if isinstance(message, str) and message != expected:
                sys.exit(f"error: client process {number + 1} said {message!r}")
            messages.append(message)
        return messages

    try:
        progress.show("ramp", 0, plan.connections, f"in {count} processes", force=True)
        ramp_started = time.monotonic()
        step("ramped", "ramped")
        results.ramp_seconds = time.monotonic() - ramp_started
        progress.done()

        results.hold_start = sample_all(plan)
        hold_started = time.monotonic()
        until = hold_started + plan.hold
        for channel in channels:
            channel.send(until)
        progress.show("hold", 0, round(plan.hold), "s", force=True)
        step("held", "done holding")
        results.hold_seconds = time.monotonic() - hold_started
        progress.done()
        results.hold_end = sample_all(plan)
        if results.metrics_before:
            for url in plan.metrics_urls:
                read_metrics_into(results, url, "held")

        for channel in channels:
            channel.send("check")
        for share_results in step("", "done checking"):
            results.add(share_results)
    finally:
        for process in processes:
            process.join(2 * plan.timeout)
            if process.is_alive():
                process.kill()
                process.join()
    return results


# --- raw WebSocket frames, for the lean clients (storm.py, fanout.py) ---------

# Client frames are masked (RFC 6455, section 5.3); the server only unmasks,
# so one key does.
MASK = b"\x5a\x3c\x96\x0f"


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One whole frame from the client: FIN, `opcode`, masked `payload`."""
    length = len(payload)
    if length < 126:
        header = bytes((0x80 | opcode, 0x80 | length))
    elif length < 1 << 16:
        header = bytes((0x80 | opcode, 0x80 | 126)) + length.to_bytes(2, "big")
    else:
        raise ValueError("the lean clients send short frames only")
    key = (MASK * (length // 4 + 1))[:length]
    body = int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")
    return header + MASK + body.to_bytes(length, "big")


def upgrade_status(buffer: bytearray) -> int | None:
    """The status of the answer to the upgrade, taken off the front of
    `buffer` with the rest of its head; None until the head is whole."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    status = int(buffer[:end].split(b" ", 2)[1])
    del buffer[: end + 4]
    return status


def server_frames(buffer: bytearray):
    """Each whole frame at the front of `buffer`, as (opcode, payload), taken
    off it; a frame still arriving stays. The server's frames are unmasked."""
    while len(buffer) >= 2:
        opcode, length, start = buffer[0] & 0x0F, buffer[1] & 0x7F, 2
        if length == 126:
            if len(buffer) < 4:
                return
            length, start = int.from_bytes(buffer[2:4], "big"), 4
        elif length == 127:
            if len(buffer) < 10:
                return
            length, start = int.from_bytes(buffer[2:10], "big"), 10
        if len(buffer) < start + length:
            return
        payload = bytes(buffer[start : start + length])
        del buffer[: start + length]
        yield opcode, payload


# --- handshakes per second ----------------------------------------------------

# A client's close frame: FIN + close, masked, two bytes of payload (1000).
CLOSE_MASK = b"\x11\x22\x33\x44"
CLOSE_FRAME = (
    b"\x88\x82"
    + CLOSE_MASK
    + bytes(b ^ CLOSE_MASK[i % 4] for i, b in enumerate((1000).to_bytes(2, "big")))
)


def upgrade_request(url: str, token: str | None) -> bytes:
    """The one upgrade request every handshake sends (the key is not checked
    by the server beyond its form, so one will do)."""
    parts = urlsplit(url)
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {parts.path or '/'} HTTP/1.1",
        f"Host: {parts.netloc}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def one_handshake(plan: Plan, index: int, request: bytes) -> float:
    """Connect, upgrade, close with 1000, wait for the server to close the
    connection; the time from connect to the 101, in ms."""
    parts = urlsplit(plan.url)
    started = time.perf_counter()
    local = None
    if plan.source_addresses:
        local = (plan.source_addresses[index % len(plan.source_addresses)], 0)
    reader, writer = await asyncio.open_connection(
        parts.hostname, parts.port or 80, local_addr=local
    )
    try:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        status = head.split(b" ", 2)[1].decode()
        if status != "101":
            raise HandshakeRefused(int(status))
        upgraded = (time.perf_counter() - started) * 1000
        writer.write(CLOSE_FRAME)
        # The server answers the close frame and closes the connection.
        while await reader.read(4096):
            pass
        return upgraded
    finally:
        writer.close()
        with suppress(OSError):
            await writer.wait_closed()


class HandshakeRefused(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


async def handshake_rate(plan: Plan, progress: Progress) -> dict:
    """N handshakes, `concurrency` at a time; rate, latency, CPU per handshake."""
    request = upgrade_request(plan.url, plan.token)
    latencies: list[float] = []
    failures: Counter = Counter()
    if plan.warmup:
        await warm_up(plan)
    before = sample_all(plan)
    client_cpu = time.process_time()
    started = time.monotonic()
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < plan.connections:
            index, next_index = next_index, next_index + 1
            try:
                latencies.append(
                    await asyncio.wait_for(
                        one_handshake(plan, index, request), plan.timeout
                    )
                )
            except HandshakeRefused as refused:
                failures[f"HTTP {refused.status}"] += 1
            except Exception as error:
                failures[failure_reason(error, "handshake")] += 1
            progress.show("open", len(latencies), plan.connections)

    await asyncio.gather(*(worker() for _ in range(plan.concurrency)))
    seconds = max(time.monotonic() - started, 1e-9)
    progress.show("open", len(latencies), plan.connections, force=True)
    progress.done()
    after = sample_all(plan)
    report = {
        "url": plan.url,
        "mode": "handshakes",
        "concurrency": plan.concurrency,
        "asked": plan.connections,
        "handshakes": len(latencies),
        "failed": sum(failures.values()),
        "failures": dict(failures.most_common()),
        "seconds": round(seconds, 3),
        "handshakes_per_second": round(len(latencies) / seconds, 1),
        "handshake_ms": latency_summary(latencies),
        "client_cpu_share": round((time.process_time() - client_cpu) / seconds, 3),
    }
    for name, first in before.items():
        last = after[name]
        # Processes that changed (a worker restarted) cannot be compared.
        same = first.pids == last.pids
        used = last.cpu_seconds - first.cpu_seconds
        report[name] = {
            "processes": last.processes,
            "same_processes": same,
            "cpu_share": round(used / seconds, 3) if same else None,
            "cpu_ms_per_handshake": (
                round(used * 1000 / len(latencies), 3) if same and latencies else None
            ),
        }
    return report


def print_handshake_report(report: dict) -> None:
    lines = [
        f"target      {report['url']} ({report['concurrency']} at a time)",
        f"handshakes  {report['handshakes']} of {report['asked']} in "
        f"{report['seconds']:.1f} s: {report['handshakes_per_second']:.0f}/s, "
        f"{report['failed']} failed",
        f"latency     ms: {milliseconds(report['handshake_ms'])}",
    ]
    if report["failures"]:
        reasons = ", ".join(f"{k}: {v}" for k, v in report["failures"].items())
        lines.append(f"failures    {reasons}")
    for name in ("server", "proxy"):
        group = report.get(name)
        if group and group["cpu_ms_per_handshake"] is not None:
            lines.append(
                f"{name:<11} {group['cpu_ms_per_handshake']:.2f} ms of CPU per "
                f"handshake, {group['cpu_share']:.0%} of a core"
            )
        elif group:
            lines.append(f"{name:<11} not measured: its processes changed")
    lines.append(f"client      {report['client_cpu_share']:.0%} of a core")
    print("\n".join(lines))


# --- the report ----------------------------------------------------------------


def percentile(values: list[float], share: float) -> float | None:
    """Nearest-rank percentile, `share` in 0..1; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def latency_summary(values: list[float]) -> dict:
    return {
        "count": len(values),
        "p50": percentile(values, 0.50),
        "p95": percentile(values, 0.95),
        "p99": percentile(values, 0.99),
        "max": max(values) if values else None,
    }


def summary(plan: Plan, results: Results) -> dict:
    report = {
        "url": plan.url,
        "compression": plan.compression,
        "traffic": plan.traffic,
        "source_addresses": len(plan.source_addresses) or 1,
        "asked": results.asked,
        "opened": results.opened,
        "held": results.held,
        "hold_seconds": round(results.hold_seconds, 3),
        "failed": sum(results.failures.values()),
        "failures": dict(results.failures.most_common()),
        "open_at_first_failure": results.open_at_first_failure,
        "ramp_seconds": round(results.ramp_seconds, 3),
        "handshake_ms": latency_summary(results.handshake_ms),
        "echo_ms": latency_summary(results.echo_ms),
    }
    if plan.traffic == "echo":
        report["traffic_ms"] = latency_summary(results.traffic_ms)
        report["round_trips_per_second"] = round(
            len(results.traffic_ms) / max(plan.hold, 1e-9), 1
        )
    held = results.held or results.opened
    hold = max(results.hold_seconds, 1e-9)
    report["client_cpu_share"] = round(results.client_cpu_seconds / hold, 3)
    for name, before in results.before.items():
        start, end = results.hold_start[name], results.hold_end[name]
        grown = end.resident_bytes - before.resident_bytes
        # Memory and CPU time of different processes cannot be subtracted.
        same = before.pids == start.pids == end.pids
        report[name] = {
            "processes": end.processes,
            "same_processes": same,
            "before_bytes": before.resident_bytes,
            "held_bytes": end.resident_bytes,
            "per_socket_bytes": round(grown / held) if held and same else None,
            # CPU time during the hold, as a share of one core.
            "cpu_share": (
                round((end.cpu_seconds - start.cpu_seconds) / hold, 3) if same else None
            ),
        }
    if plan.metrics_urls:
        report["service_metrics"] = service_figures(plan, results)
    return report


def service_figures(plan: Plan, results: Results) -> dict:
    """What /metrics said: the capacity and sockets held at the end of the
    hold, the handshakes of the run by outcome (warm-up excluded). With
    several instances, their sum, and each one's under "instances"."""
    urls = plan.metrics_urls
    missing = [url for url in urls if url not in results.metrics_held]
    if results.metrics_error or missing:
        error = results.metrics_error or "not read"
        return {"url": urls[0] if len(urls) == 1 else urls, "error": error}
    import service_metrics

    route = urlsplit(plan.url).path
    each = []
    for url in urls:
        grown = service_metrics.change(
            results.metrics_before[url], results.metrics_held[url]
        )
        each.append(
            {
                "url": url,
                "capacity": grown["capacity"],
                "route": route,
                "connections": grown["connections"].get(route, 0.0),
                "handshakes": grown["handshakes"],
            }
        )
    if len(each) == 1:
        return each[0]
    outcomes = each[0]["handshakes"].keys()
    return {
        "url": urls,
        "capacity": sum(one["capacity"] for one in each),
        "route": route,
        "connections": sum(one["connections"] for one in each),
        "handshakes": {
            outcome: sum(one["handshakes"].get(outcome, 0.0) for one in each)
            for outcome in outcomes
        },
        "instances": each,
    }


def milliseconds(figures: dict) -> str:
    if not figures["count"]:
        return "none"
    return "  ".join(
        f"{name} {figures[name]:.1f}" for name in ("p50", "p95", "p99", "max")
    )


def print_report(report: dict) -> None:
    extension = "on" if report["compression"] else "off"
    lines = [
        f"target      {report['url']} (permessage-deflate {extension}, "
        f"{report['source_addresses']} source address(es))",
        f"sockets     {report['asked']} asked, {report['opened']} opened, "
        f"{report['held']} held {report['hold_seconds']:.0f} s and still "
        f"answering, {report['failed']} failed",
    ]
    if report["failures"]:
        reasons = ", ".join(f"{k}: {v}" for k, v in report["failures"].items())
        lines.append(f"failures    {reasons}")
        lines.append(
            f"            {report['open_at_first_failure']} open at the first failure"
        )
    rate = report["opened"] / report["ramp_seconds"] if report["ramp_seconds"] else 0
    lines += [
        f"ramp        {report['ramp_seconds']:.1f} s ({rate:.0f} sockets/s)",
        f"handshake   ms: {milliseconds(report['handshake_ms'])}",
        f"echo        ms: {milliseconds(report['echo_ms'])}",
    ]
    if "traffic_ms" in report:
        lines.append(
            f"traffic     {report['round_trips_per_second']:.0f} round trips/s, "
            f"ms: {milliseconds(report['traffic_ms'])}"
        )
    for name in ("server", "proxy"):
        if name not in report:
            continue
        group = report[name]
        if not group["same_processes"]:
            lines.append(
                f"{name:<11} not measured: its processes changed during the run "
                "(a worker restarted or exited)"
            )
            continue
        per_socket = group["per_socket_bytes"]
        each = "" if per_socket is None else f" ({per_socket / 1024:.1f} KB per socket)"
        lines.append(
            f"{name:<11} {group['processes']} processes: "
            f"{group['before_bytes'] / 2**20:.1f} MB before, "
            f"{group['held_bytes'] / 2**20:.1f} MB holding the sockets{each}, "
            f"{group['cpu_share']:.0%} of a core during the hold"
        )
    if "server" not in report:
        lines.append("server      not measured (--server-pid or --server-match)")
    if "service_metrics" in report:
        lines.append(service_line(report["service_metrics"]))
    processes = report.get("client_processes", 1)
    lines.append(
        f"client      {report['client_cpu_share']:.0%} of a core during the hold"
        + (f", {processes} processes together" if processes > 1 else "")
    )
    print("\n".join(lines))


def service_line(figures: dict) -> str:
    if "error" in figures:
        return f"/metrics    not read: {figures['error']}"
    outcomes = ", ".join(
        f"{outcome} {count:.0f}"
        for outcome, count in figures["handshakes"].items()
        if count
    )
    return (
        f"/metrics    the workers admit {figures['capacity']:.0f} sockets, held "
        f"{figures['connections']:.0f} on {figures['route']} at the end of the "
        f"hold; handshakes: {outcomes or 'none'}"
    )


# --- the command line ----------------------------------------------------------


def positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
        return value

    return parse


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Run it against your own servers only.",
    )
    parser.add_argument("url", help="ws:// or wss:// URL of an echo route")
    parser.add_argument("-n", "--connections", type=positive(int), default=100)
    parser.add_argument(
        "--rate", type=positive(float), default=500, help="new sockets per second"
    )
    # The service takes on 100 handshakes at once per worker and refuses the
    # next with 503 (HANDSHAKES_AT_ONCE): a client that keeps no more in
    # flight never meets that refusal.
    parser.add_argument(
        "--concurrency",
        type=positive(int),
        default=100,
        help="handshakes in flight at once",
    )
    parser.add_argument(
        "--hold", type=float, default=10, help="seconds to hold the sockets"
    )
    parser.add_argument(
        "--traffic",
        choices=("idle", "echo"),
        default="idle",
        help="idle sockets, or each echoing back to back during the hold",
    )
    parser.add_argument("--message-size", type=positive(int), default=32)
    parser.add_argument(
        "--compression",
        choices=("on", "off"),
        default="off",
        help="offer permessage-deflate as browsers do (on), or not (off)",
    )
    parser.add_argument(
        "--timeout", type=positive(float), default=10, help="seconds per step"
    )
    parser.add_argument("--token", default=os.environ.get("LOADTEST_TOKEN"))
    parser.add_argument("--user", help="email to get a token from /auth/token")
    parser.add_argument(
        "--password", help="the user's password (default: $LOADTEST_PASSWORD)"
    )
    parser.add_argument("--token-url", help="default: /auth/token on the URL's host")
    parser.add_argument(
        "--source-addresses",
        type=positive(int),
        help="loopback addresses to connect from (default: as many as N needs)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=0,
        help="open and close this many sockets before the first measurement",
    )
    parser.add_argument(
        "--stop-on-failure",
        action="store_true",
        help="open no more sockets after the first failure",
    )
    for name, example in (("server", "the gunicorn master"), ("proxy", "nginx")):
        parser.add_argument(
            f"--{name}-pid",
            type=int,
            action="append",
            default=[],
            help=f"PID of {example}: its memory and CPU (children's included)",
        )
        parser.add_argument(
            f"--{name}-match",
            help="or the one process whose command line contains this text",
        )
    parser.add_argument(
        "--metrics-url",
        action="append",
        default=[],
        help="the service's GET /metrics (gunicorn's own port): its figures too; "
        "once per instance behind the proxy",
    )
    parser.add_argument(
        "--handshakes",
        action="store_true",
        help="measure handshakes per second: open and close each socket at once",
    )
    parser.add_argument(
        "--processes",
        type=positive(int),
        help="client processes to share the sockets among (default: one, or as "
        "many as the open-file limit needs)",
    )
    parser.add_argument("--json", help="also write the report as JSON to this file")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    arguments = parser.parse_args(argv)
    if urlsplit(arguments.url).scheme not in ("ws", "wss"):
        parser.error("the URL must start with ws:// or wss://")
    return arguments


def watched_groups(arguments: argparse.Namespace) -> dict[str, Watched]:
    groups = {}
    for name in ("server", "proxy"):
        pids, match = (
            getattr(arguments, f"{name}_pid"),
            getattr(arguments, f"{name}_match"),
        )
        if match:
            pids = [*pids, matching_process(name, match)]
        if pids:
            groups[name] = Watched(pids)
    return groups


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    # Before anything else: a wrong --server-match should cost no socket.
    watched = watched_groups(arguments)
    for url in arguments.metrics_url:
        check_metrics_url(url)
    token = arguments.token
    if not token and arguments.user:
        password = arguments.password or os.environ.get("LOADTEST_PASSWORD")
        if password is None:
            password = getpass.getpass(f"password for {arguments.user}: ")
        token_url = arguments.token_url or token_url_for(arguments.url)
        token = fetch_token(token_url, arguments.user, password, arguments.timeout)
    if arguments.handshakes:
        # A handshake's socket closes before the next one opens.
        in_flight = min(arguments.connections, arguments.concurrency)
        raise_open_file_limit(in_flight + SPARE_FILE_DESCRIPTORS)
    else:
        processes = client_processes(arguments.connections, arguments.processes)
    plan = Plan(
        url=arguments.url,
        connections=arguments.connections,
        rate=arguments.rate,
        concurrency=arguments.concurrency,
        hold=max(0.0, arguments.hold),
        traffic=arguments.traffic,
        compression=arguments.compression == "on",
        message_size=arguments.message_size,
        timeout=arguments.timeout,
        token=token,
        source_addresses=source_addresses(
            arguments.url, arguments.connections, arguments.source_addresses
        ),
        stop_on_failure=arguments.stop_on_failure,
        warmup=arguments.warmup,
        watched=watched,
        metrics_urls=arguments.metrics_url,
    )
    progress = Progress(enabled=not arguments.quiet)
    if arguments.handshakes:
        report = asyncio.run(handshake_rate(plan, progress))
        print_handshake_report(report)
    elif processes == 1:
        report = summary(plan, asyncio.run(run(plan, progress)))
        print_report(report)
    else:
        report = summary(plan, run_in_processes(plan, progress, processes))
        report["client_processes"] = processes
        print_report(report)
    if arguments.json:
        Path(arguments.json).write_text(json.dumps(report, indent=2) + "\n")
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
