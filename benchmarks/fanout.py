"""Chat fan-out: how long one message takes to reach every subscriber.

    python benchmarks/fanout.py ws://127.0.0.1:8080/ws/chat -n 1000 \\
        [--token TOKEN] [--server-pid PID --server-port PORT] \\
        [--metrics-url http://127.0.0.1:8000/metrics] --json fanout.json

run.py runs it with a generated project's Python, and it borrows
benchmarks/loadtest.py for opening sockets. It opens N subscribers and
one sender, waits until every subscriber hears the sender (so each is
subscribed), then sends `--messages` messages one at a time and times, for
each, how long it takes to reach each subscriber. With `--server-pid` (the
gunicorn master) and `--server-port` (the port it listens on) it also counts
the connections each worker holds, from the kernel's TCP table, to show that
the subscribers are spread over the workers (the service's /metrics only has
their sum).

The subscribers are lean: a raw socket each with an asyncio protocol that
parses the server's frames as they arrive (answering pings, so that the
server keeps them) and looks for the labels in each text frame, with no
WebSocket library and no coroutine per message. At 10,000 subscribers a
library client's own reading of every socket would be most of what is
timed. The sender is a websockets client, as in loadtest.py.

With `--metrics-url` (the generated service's GET /metrics, on gunicorn's own
port) it also reads the service's own delivery time, chat_delivery_seconds:
from a message's publication to its write on each socket, for the timed
messages only (read before the first and after the last). That leaves out
what the client's clock adds: the sender's way in, nginx, and this one
process reading every subscriber's socket in turn.
"""

import argparse
import asyncio
import contextlib
import json
import os
import re
import secrets
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import loadtest

# Seconds to wait for every subscriber to hear the sender's joining message.
JOIN_SECONDS = 60
# Pause between timed messages, so that one does not queue behind another.
PAUSE_SECONDS = 0.5
# Seconds to wait for /metrics to count every delivery: a worker observes
# each one just after the write the client may already have read.
COUNTED_SECONDS = 10
# The labels the sender sends, as they appear in what a subscriber receives.
LABEL = re.compile(rb"join-[0-9a-f]{8}|fanout-[0-9]+-[0-9a-f]{8}")


def sockets_per_worker(master: int, port: int) -> dict[int, int]:
    """Established TCP connections on `port` that each child of `master` holds."""
    established = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01":  # 01: ESTABLISHED
                established.add(fields[9])  # the socket's inode
    counts = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if parent != master:
                continue
            links = [os.readlink(fd) for fd in (entry / "fd").iterdir()]
        except OSError:
            continue
        inodes = {link[8:-1] for link in links if link.startswith("socket:[")}
        counts[int(entry.name)] = len(inodes & established)
    return counts


async def measure(arguments) -> dict:
    plan = loadtest.Plan(
        url=arguments.url,
        connections=arguments.subscribers + 1,
        rate=1000,
        concurrency=100,
        hold=0,
        traffic="idle",
        compression=False,
        message_size=0,
        timeout=arguments.timeout,
        token=arguments.token,
        source_addresses=[],
        stop_on_failure=False,
        warmup=0,
        watched={},
    )
    failures: dict[str, int] = {}

    def failed(error: BaseException) -> None:
        if isinstance(error, loadtest.HandshakeRefused):
            reason = f"HTTP {error.status}"
        else:
            reason = loadtest.failure_reason(error, "handshake")
        failures[reason] = failures.get(reason, 0) + 1

    try:
        sender = await asyncio.wait_for(
            loadtest.open_socket(plan, 0), arguments.timeout
        )
    except Exception as error:
        failed(error)
        return {"failures": failures, "subscribers": 0, "asked": arguments.subscribers}
    listening = Listening()
    request = loadtest.upgrade_request(plan.url, plan.token)
    parts = urlsplit(plan.url)
    started = time.monotonic()

    async def open_one(index: int):
        try:
            return await asyncio.wait_for(
                subscribe(parts.hostname, parts.port or 80, request, listening),
                arguments.timeout,
            )
        except Exception as error:
            failed(error)
            return None

    opened = await loadtest.gather_limited(
        (open_one(index) for index in range(arguments.subscribers)), plan.concurrency
    )
    subscribers = [each for each in opened if each is not None]
    listening.subscribers = len(subscribers)
    # The sender hears the chat too; reading keeps its buffer empty.
    drain = asyncio.create_task(Listening.drain(sender))
    report = {
        "asked": arguments.subscribers,
        "subscribers": len(subscribers),
        "open_seconds": round(time.monotonic() - started, 3),
    }
    cpu = time.process_time()
    try:
        if subscribers:
            report.update(await timed_messages(arguments, sender, listening))
    except Exception as error:  # the sender's socket failed: say how
        report["error"] = loadtest.failure_reason(error, "sending")
    report["client_cpu_seconds"] = round(time.process_time() - cpu, 3)
    report["closed_early"] = sum(1 for each in subscribers if each.closed)
    drain.cancel()
    for each in subscribers:
        each.close()
    await loadtest.close_quietly(sender)
    report["failures"] = failures
    return report


class Subscriber(asyncio.Protocol):
    """One lean chat subscriber: the upgrade, then the server's frames parsed
    as they come; pings answered, labels in text frames heard."""

    def __init__(self, request: bytes, listening: "Listening") -> None:
        self.request = request
        self.listening = listening
        self.upgraded: asyncio.Future = asyncio.get_running_loop().create_future()
        self.buffer = bytearray()
        self.seen: set[bytes] = set()
        self.transport = None
        self.closed = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded.done():
            status = loadtest.upgrade_status(self.buffer)
            if status is None:
                return
            if status != 101:
                self.upgraded.set_exception(loadtest.HandshakeRefused(status))
                self.transport.close()
                return
            self.upgraded.set_result(None)
        now = None
        for opcode, payload in loadtest.server_frames(self.buffer):
            if opcode == 0x9:  # ping: a pong with the same payload
                self.transport.write(loadtest.client_frame(0xA, payload))
            elif opcode == 0x8:
                self.closed = True
            elif opcode in (0x0, 0x1):
                now = now or time.perf_counter()
                self.listening.hear(payload, self.seen, now)

    def connection_lost(self, error) -> None:
        self.closed = True
        if not self.upgraded.done():
            self.upgraded.set_exception(error or ConnectionResetError())

    def close(self) -> None:
        if self.transport and not self.transport.is_closing():
            self.transport.write(loadtest.client_frame(0x8, (1000).to_bytes(2, "big")))
            self.transport.close()


async def subscribe(host: str, port: int, request: bytes, listening) -> Subscriber:
    loop = asyncio.get_running_loop()
    transport, subscriber = await loop.create_connection(
        lambda: Subscriber(request, listening), host, port
    )
    try:
        await subscriber.upgraded
    except BaseException:
        transport.close()
        raise
    return subscriber


class Listening:
    """When each subscriber first heard each label."""

    def __init__(self) -> None:
        self.subscribers = 0
        self.heard: dict[str, list[float]] = {}
        self.everyone_heard: dict[str, asyncio.Event] = {}

    def expect(self, label: str) -> None:
        self.heard[label] = []
        self.everyone_heard[label] = asyncio.Event()

    def hear(self, payload: bytes, seen: set[bytes], now: float) -> None:
        """One subscriber's text frame, received at `now`."""
        for found in LABEL.findall(payload):
            if found in seen:
                continue
            seen.add(found)
            times = self.heard.get(found.decode())
            if times is None:
                continue
            times.append(now)
            if len(times) == self.subscribers:
                self.everyone_heard[found.decode()].set()

    @staticmethod
    async def drain(ws) -> None:
        with contextlib.suppress(Exception):
            while True:
                await ws.recv()


async def timed_messages(arguments, sender, listening: Listening) -> dict:
    """Join every subscriber, then time each message to every one of them."""
    # A subscriber may not be subscribed yet when its 101 arrives, so send
    # until all have heard one joining message (each a new label).
    joined = 0
    join_deadline = time.monotonic() + JOIN_SECONDS
    while time.monotonic() < join_deadline and joined < listening.subscribers:
        label = f"join-{secrets.token_hex(4)}"
        listening.expect(label)
        await sender.send(json.dumps({"text": label}))
        await asyncio.sleep(1)
        joined = max(
            len(times) for name, times in listening.heard.items() if "join-" in name
        )
    await asyncio.sleep(1)

    spread = {}
    if arguments.server_pid and arguments.server_port:
        spread = sockets_per_worker(arguments.server_pid, arguments.server_port)
    url = arguments.metrics_url
    before = try_reading(url) if url else None

    messages = []
    for number in range(arguments.messages):
        label = f"fanout-{number}-{secrets.token_hex(4)}"
        listening.expect(label)
        started = time.perf_counter()
        await sender.send(json.dumps({"text": label}))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                listening.everyone_heard[label].wait(), arguments.timeout
            )
        arrivals = sorted(
            (moment - started) * 1000 for moment in listening.heard[label]
        )
        complete = len(arrivals) == listening.subscribers
        messages.append(
            {
                "reached": len(arrivals),
                "all_ms": arrivals[-1] if complete else None,
                "p50_ms": loadtest.percentile(arrivals, 0.5),
                "p99_ms": loadtest.percentile(arrivals, 0.99),
            }
        )
        await asyncio.sleep(PAUSE_SECONDS)

    complete = [m["all_ms"] for m in messages if m["all_ms"] is not None]
    middles = [m["p50_ms"] for m in messages if m["p50_ms"] is not None]
    report = {
        "joined": joined,
        "per_worker": list(spread.values()),
        "messages": messages,
        "reached_min": min((m["reached"] for m in messages), default=0),
        "all_ms_median": statistics.median(complete) if complete else None,
        # Over the messages; with fewer than 100 this is the slowest one.
        "all_ms_p99": loadtest.percentile(complete, 0.99),
        "p50_ms_median": statistics.median(middles) if middles else None,
    }
    if before is not None:
        # Every chat socket gets each message, the sender's too.
        expected = arguments.messages * (listening.subscribers + 1)
        route = urlsplit(arguments.url).path
        report["service_metrics"] = await delivery_figures(url, route, before, expected)
    return report


def try_reading(url: str) -> dict:
    """The service's figures, or why they could not be read."""
    try:
        return loadtest.read_metrics(url)
    except (OSError, ValueError) as error:
        return {"error": f"{url}: {error}"}


async def delivery_figures(url: str, route: str, before: dict, expected: int) -> dict:
    """chat_delivery_seconds over the timed messages, from /metrics; and the
    chat sockets the service held before them."""
    import service_metrics

    if "error" in before:
        return {"url": url, "error": before["error"]}
    deadline = time.monotonic() + COUNTED_SECONDS
    while True:
        after = try_reading(url)
        if "error" in after:
            return {"url": url, "error": after["error"]}
        delivery = service_metrics.change(before, after)["chat_delivery"]
        if delivery["count"] >= expected or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    return {
        "url": url,
        "connections": before["connections"].get(route, 0.0),
        "expected": expected,
        "deliveries": delivery["count"],
        "seconds": delivery["sum"],
        "buckets": delivery["buckets"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="ws:// URL of the chat route")
    parser.add_argument("-n", "--subscribers", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=5)
    parser.add_argument("--token", help="bearer token (none for the baseline)")
    parser.add_argument("--timeout", type=float, default=10)
    parser.add_argument("--server-pid", type=int)
    parser.add_argument("--server-port", type=int)
    parser.add_argument(
        "--metrics-url", help="the service's GET /metrics: its own delivery time"
    )
    parser.add_argument("--json", type=Path, required=True)
    arguments = parser.parse_args()
    if arguments.metrics_url:
        # Before any socket: a wrong URL should cost no run.
        loadtest.check_metrics_url(arguments.metrics_url)
    loadtest.raise_open_file_limit(arguments.subscribers + 256)
    report = asyncio.run(measure(arguments))
    arguments.json.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "messages"}))
    return 0 if report.get("reached_min") == arguments.subscribers else 1


if __name__ == "__main__":
    sys.exit(main())
