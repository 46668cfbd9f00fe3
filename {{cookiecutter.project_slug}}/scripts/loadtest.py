"""Open many authenticated WebSockets, hold them, echo once on each: how many fit.

    python scripts/loadtest.py ws://127.0.0.1:8000/ws/echo -n 1000 --hold 30 \\
        --user you@example.com --server-pid "$(cat gunicorn.pid)"

It gets one bearer token from /auth/token (the password from
$LOADTEST_PASSWORD, or a prompt; `--token` skips this), opens the sockets,
`--concurrency` handshakes at a time, holds them `--hold` seconds, then sends one
message on each and waits for it back. It prints the sockets opened and held,
the failures by reason, the handshakes per second, and with `--server-pid` the
resident memory of that process and its children (gunicorn's master and
workers) before and while holding. The exit status is 1 when a socket failed.
"""

import argparse
import asyncio
import base64
import errno
import getpass
import json
import os
import re
import resource
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus


def fetch_token(ws_url: str, user: str, password: str) -> str:
    """One bearer token from POST /auth/token on the URL's host, HTTP Basic."""
    parts = urlsplit(ws_url)
    scheme = {"ws": "http", "wss": "https"}[parts.scheme]
    url = urlunsplit((scheme, parts.netloc, "/auth/token", "", ""))
    basic = base64.b64encode(f"{user}:{password}".encode()).decode()
    # The scheme is http or https, never file: or another.
    request = urllib.request.Request(  # noqa: S310
        url, method="POST", headers={"Authorization": f"Basic {basic}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return json.load(response)["token"]
    except urllib.error.HTTPError as error:
        sys.exit(f"error: {url} answered {error.code}; check --user and the password")
    except OSError as error:
        sys.exit(f"error: cannot reach {url}: {error}")


def resident_memory(pid: int) -> tuple[int, int]:
    """(processes, bytes): VmRSS of `pid` and its descendants, from /proc."""
    processes, total, pending = 0, 0, [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            for children in Path(f"/proc/{current}/task").glob("*/children"):
                pending += [int(child) for child in children.read_text().split()]
        except OSError:  # it ended while we looked
            continue
        processes += 1
        total += int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)[1]) * 1024
    return processes, total


def failure(error: Exception, step: str) -> str:
    """A short, countable name for what went wrong."""
    if isinstance(error, InvalidStatus):
        return f"HTTP {error.response.status_code}"
    if isinstance(error, ConnectionClosed):
        return f"closed {error.rcvd.code if error.rcvd else 1006}"
    if isinstance(error, OSError) and error.errno:
        return f"{errno.errorcode.get(error.errno, error.errno)} ({step})"
    if isinstance(error, TimeoutError):
        return f"timeout ({step})"
    return f"{type(error).__name__} ({step})"


async def run(arguments, token: str) -> tuple[int, int, Counter, float, tuple]:
    """Open, hold, echo; (opened, held, failures, seconds to open, memory held)."""
    failures = Counter()
    gate = asyncio.Semaphore(arguments.concurrency)
    headers = {"Authorization": f"Bearer {token}"}

    async def open_one():
        async with gate:
            try:
                return await connect(
                    arguments.url,
                    additional_headers=headers,
                    open_timeout=arguments.timeout,
                    ping_interval=None,  # the server pings; the client answers
                )
            except Exception as error:
                failures[failure(error, "handshake")] += 1

    async def echo(ws, index: int) -> bool:
        async with gate:
            try:
                await ws.send(f"hello {index}")
                reply = await asyncio.wait_for(ws.recv(), arguments.timeout)
                if reply != f"hello {index}":
                    raise ValueError("not the message sent")
                return True
            except Exception as error:
                failures[failure(error, "echo")] += 1
                return False

    started = time.monotonic()
    opened = await asyncio.gather(*(open_one() for _ in range(arguments.connections)))
    sockets = [ws for ws in opened if ws is not None]
    opening = time.monotonic() - started
    # The hold ends early once the server has closed every socket (a deploy).
    closing = [asyncio.ensure_future(ws.wait_closed()) for ws in sockets]
    if closing:
        await asyncio.wait(closing, timeout=arguments.hold)
    for waiting in closing:
        waiting.cancel()
    memory = resident_memory(arguments.server_pid) if arguments.server_pid else ()
    answered = await asyncio.gather(*(echo(ws, i) for i, ws in enumerate(sockets)))
    await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    return len(sockets), sum(answered), failures, opening, memory


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("url", help="ws:// or wss:// URL of the echo route")
    add("-n", "--connections", type=int, default=100, help="sockets (100)")
    add("--hold", type=float, default=10, help="seconds to hold them (10)")
    add("--concurrency", type=int, default=100, help="handshakes at once (100)")
    add("--timeout", type=float, default=10, help="seconds per step (10)")
    add("--user", help="email for /auth/token")
    add(
        "--token",
        default=os.environ.get("LOADTEST_TOKEN"),
        help="a bearer token instead of --user (default: $LOADTEST_TOKEN)",
    )
    add("--server-pid", type=int, help="the gunicorn master's pid")
    arguments = parser.parse_args()
    if urlsplit(arguments.url).scheme not in ("ws", "wss"):
        parser.error("the URL must start with ws:// or wss://")
    if not (arguments.token or arguments.user):
        parser.error("give --user EMAIL (or --token)")
    if arguments.server_pid and not Path(f"/proc/{arguments.server_pid}").exists():
        parser.error(f"no process {arguments.server_pid} on this machine")
    token = arguments.token or fetch_token(
        arguments.url,
        arguments.user,
        os.environ.get("LOADTEST_PASSWORD")
        or getpass.getpass(f"password for {arguments.user}: "),
    )
    # One file descriptor per socket, and some to spare.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = arguments.connections + 100
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            sys.exit(f"error: {needed} open files needed, the limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))

    before = resident_memory(arguments.server_pid) if arguments.server_pid else ()
    opened, held, failures, opening, holding = asyncio.run(run(arguments, token))
    print(
        f"sockets    {arguments.connections} asked, {opened} opened, {held} held "
        f"{arguments.hold:g} s and answering, {sum(failures.values())} failed"
    )
    if failures:
        reasons = ", ".join(f"{reason}: {n}" for reason, n in failures.most_common())
        print(f"failures   {reasons}")
    print(f"opening    {opened / max(opening, 1e-9):.0f} handshakes per second")
    if before and holding:
        per_socket = (holding[1] - before[1]) / max(held, 1) / 1024
        print(
            f"server     {holding[0]} processes, {before[1] / 2**20:.1f} MB before, "
            f"{holding[1] / 2**20:.1f} MB holding, {per_socket:.1f} KB per socket"
        )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
