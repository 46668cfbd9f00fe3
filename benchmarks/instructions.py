"""Instructions per echo message and per handshake, counted: the baseline's,
the service's and, if asked, the floor's (floor_app.py).

    BAKE/.venv/bin/python /path/to/benchmarks/instructions.py /tmp/bakes/NAME \\
        --sockets 1,100 --messages 2000 --json instructions-gthread.json
    BAKE/.venv/bin/python /path/to/benchmarks/instructions.py /tmp/bakes/NAME \\
        --sockets "" --handshakes 300 --floor token,user,count

A rate, or CPU time from /proc, moves by a tenth or more between rounds on
this shared machine, more than what a change to the per-message path is
worth. A count of the instructions the worker runs on one socket moves by
about one percent from run to run: it says whether a change made the path
shorter, and by how much, where the rates cannot. On many sockets under
gthread, how often the threads hand the GIL to one another depends on
timing, and with it the interpreter's work: the baseline's count at 100
sockets was 187,000 per message on a quiet machine and 217,000 on a loaded
one. Compare the two targets of one run there, not runs.

Run with a bake's own python (a project baked with broadcast=redis, as
benchmarks/run.py bakes it). Each target (the baseline, the service, then
each floor, straight from gunicorn with the settings of profile_handshake.py)
boots once as one gunicorn worker of the bake's worker class under
valgrind's callgrind and serves every count in turn. A count starts once
the sockets are open and have echoed a warm-up; then `--messages` round
trips on `--sockets` sockets at once (a raw-socket client, outside
valgrind), and the count stops and is written. With `--handshakes N`, the
same for N handshakes, `--concurrency` at a time, each the whole life of a
socket as profile_handshake.py times it (upgrade, 101, close 1000, the
server's end of TCP), after a warm-up of handshakes; `--floor STEPS` counts
floor_app.py with those FLOOR_STEPS as one more target (may be repeated).

What is counted: the worker's instructions in user space (the interpreter,
C extensions, libc), every thread of it. Not counted: the kernel's work (the
system calls, the switches between threads), the time spent waiting, and
other processes (redis-server, the database's server if any). So
the figures compare the code each message runs through, not the rates. The
worker runs some 50 times slower under valgrind, and the other work it does
in the span (the service's once-a-second message counts, its pings) is
counted with the messages. `--top N` lists the functions (C-level: the
interpreter's, an extension's) whose counts differ most between the service
and the baseline.

Needs valgrind (Debian's package). Only loopback addresses are used.
"""

import argparse
import asyncio
import functools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import profile_handshake as ph

# Round trips on each socket before the count starts: imports, the first
# calls of each code path, the worker's threads or greenlets all started.
WARM_UP_EACH = 3
WARM_UP_AT_LEAST = 300
WARM_UP_HANDSHAKES = 60
BOOT_SECONDS = 600  # the service's imports under valgrind take a minute or two


def callgrind_total(path: Path) -> int:
    """The instructions counted in a callgrind output file (its `totals:`)."""
    for line in path.read_text().splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise ValueError(f"{path}: no totals line (was the dump written?)")


def by_function(path: Path) -> dict[str, int]:
    """{function: instructions counted in it, not in what it called}"""
    annotated = subprocess.run(
        ["callgrind_annotate", "--inclusive=no", "--threshold=100", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    counts: dict[str, int] = {}
    for line in annotated.splitlines():
        count, _, rest = line.strip().partition(" ")
        if not count[:1].isdigit() or "PROGRAM TOTALS" in rest:
            continue
        # "1,234 (0.5%)  file.c:function [library]"
        name = rest.split(")", 1)[-1].strip().split(" [", 1)[0]
        # CPython's build folder: "/tmp/python-build.N/Python-3.11.7/".
        name = re.sub(r"^.*/Python-[0-9.]+/", "", name)
        counts[name] = counts.get(name, 0) + int(count.replace(",", ""))
    return counts


def command(bench: ph.Bench, target: str, out: Path) -> tuple[list, Path, dict]:
    """(the command under valgrind, its folder, its environment)"""
    valgrind = [
        "valgrind",
        "--tool=callgrind",
        "--trace-children=yes",
        "--instr-atstart=no",
        f"--callgrind-out-file={out}.%p",
    ]
    # One worker, and time for it: under valgrind it misses gunicorn's
    # heartbeat of 30 s otherwise.
    one_worker = ["--workers", "1", "--timeout", "900"]
    if target == "service":
        gunicorn = [bench.bin / "gunicorn", "-c", "gunicorn.conf.py"]
        gunicorn += ["--bind", "127.0.0.1:{port}"]
        return [*valgrind, *gunicorn, *one_worker], bench.bake, bench.env()
    app = "baseline_app:app" if target == "baseline" else "floor_app:app"
    gunicorn = [str(c) for c in bench.baseline_command(app)]
    gunicorn[gunicorn.index("--workers") : gunicorn.index("--workers") + 2] = []
    gunicorn[gunicorn.index("--timeout") : gunicorn.index("--timeout") + 2] = []
    env = {**os.environ, "REDIS_URL": bench.settings["REDIS_URL"]}
    return [*valgrind, *gunicorn, *one_worker], ph.BENCHMARKS, env


async def echo_on(port: int, path: str, token, between, *, sockets: int, each: int):
    """Open `sockets`, warm them up, call `between()` (the count starts), then
    `each` round trips on every socket at once; returns the seconds taken."""
    request = ph.upgrade_request(path, port, token)
    opened = [await ph.open_socket(port, request) for _ in range(sockets)]

    async def talk(reader, writer, count):
        for _ in range(count):
            writer.write(ph.MESSAGE_FRAME)
            opcode, payload = await ph.read_frame(reader, writer)
            assert opcode == 0x1 and payload == ph.MESSAGE, (opcode, payload[:100])

    warm_up = max(WARM_UP_EACH, -(-WARM_UP_AT_LEAST // sockets))
    await asyncio.gather(*(talk(r, w, warm_up) for r, w in opened))
    between()
    started = time.perf_counter()
    await asyncio.gather(*(talk(r, w, each) for r, w in opened))
    elapsed = time.perf_counter() - started
    await asyncio.gather(*(ph.close_socket(r, w) for r, w in opened))
    return elapsed


async def handshakes_on(port: int, path: str, token, between, *, count, at_once):
    """Warm up with handshakes, call `between()` (the count starts), then
    `count` handshakes, `at_once` at a time; returns the seconds taken."""
    await ph.handshakes(port, path, token, WARM_UP_HANDSHAKES, at_once)
    between()
    started = time.perf_counter()
    await ph.handshakes(port, path, token, count, at_once)
    return time.perf_counter() - started


def count(bench: ph.Bench, target: str, works: dict) -> dict[str, Path]:
    """Run one target under callgrind, booted once, while each of `works`
    ({name: work(port, path, token, between)}) talks to it in turn;
    {name: the callgrind file of the worker's count for that work}."""
    out = bench.workdir / f"callgrind-{target}"
    argv, folder, env = command(bench, target, out)
    token = None
    if target.startswith("floor:"):
        floor_env, token = bench.floor_environment(target.removeprefix("floor:"))
        env = {**env, **floor_env}
    port = ph.free_port()
    argv = [str(c).replace("{port}", str(port)) for c in argv]
    log = (bench.workdir / f"{target}.log").open("w")
    process = subprocess.Popen(
        argv, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    bench.processes.append(process)
    files = {}
    try:
        ph.wait_for_port(port, process, seconds=BOOT_SECONDS)
        deadline = time.monotonic() + BOOT_SECONDS
        while not (workers := ph.children(process.pid)):
            assert time.monotonic() < deadline, "no worker started"
            time.sleep(0.5)
        (worker,) = workers
        if target == "service":
            token = bench.token(port)
        path = "/echo" if target == "baseline" else "/ws/echo"

        def control(*options: str) -> None:
            subprocess.run(
                ["callgrind_control", *options, str(worker)],
                check=True,
                capture_output=True,
            )

        for name, work in works.items():
            dumped = set(bench.workdir.glob(f"{out.name}.{worker}.*"))
            seconds = asyncio.run(work(port, path, token, lambda: control("-i", "on")))
            control("-i", "off")
            control("-d")  # writes the count so far, and zeroes it
            (files[name],) = set(bench.workdir.glob(f"{out.name}.{worker}.*")) - dumped
            print(f"{target}, {name}: {seconds:.1f} s under valgrind")
    finally:
        ph.stop(process)
    return files


def compare(files: dict[str, Path], units: int, unit: str, top: int) -> dict:
    """Instructions per unit of each target, each against the baseline's."""
    per_unit = {t: callgrind_total(f) / units for t, f in files.items()}
    ratios = {t: n / per_unit["baseline"] for t, n in per_unit.items()}
    entry = {unit + "s": units, "per_" + unit: per_unit, "ratios": ratios}
    print(
        f"  instructions per {unit}: "
        + ", ".join(f"{t} {n:,.0f} (x{ratios[t]:.3f})" for t, n in per_unit.items())
    )
    if top:
        counts = {t: by_function(f) for t, f in files.items()}
        names = set(counts["baseline"]) | set(counts["service"])
        differences = sorted(
            (
                (counts["service"].get(n, 0) - counts["baseline"].get(n, 0)) / units,
                n,
            )
            for n in names
        )
        entry["most_added"] = differences[::-1][:top]
        entry["most_saved"] = differences[:top]
        print("  the service's most added, by C function:")
        for difference, name in entry["most_added"]:
            print(f"  {difference:+12,.0f}  {name}")
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bake", type=Path, help="a baked project with its .venv")
    parser.add_argument("--sockets", default="1,100", help='e.g. 1,100; "" for none')
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--handshakes", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument(
        "--floor",
        action="append",
        default=[],
        metavar="STEPS",
        help="also count floor_app.py with these FLOOR_STEPS (may be repeated)",
    )
    parser.add_argument("--top", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="pf-instructions-"))
    bench = ph.Bench(args.bake.resolve(), workdir)
    targets = ["baseline", "service", *(f"floor:{steps}" for steps in args.floor)]
    report = {"worker_class": bench.worker_class, "messages": args.messages}
    works, units = {}, {}
    for sockets in [int(n) for n in args.sockets.split(",") if n]:
        each = max(1, args.messages // sockets)
        name = f"sockets={sockets}"
        works[name] = functools.partial(echo_on, sockets=sockets, each=each)
        units[name] = (each * sockets, "message")
    if args.handshakes:
        name = f"handshakes={args.handshakes}"
        works[name] = functools.partial(
            handshakes_on, count=args.handshakes, at_once=args.concurrency
        )
        units[name] = (args.handshakes, "handshake")
    try:
        files = {target: count(bench, target, works) for target in targets}
        for name, (number, unit) in units.items():
            print(f"{name}: {number} {unit}s")
            report[name] = compare(
                {t: files[t][name] for t in targets}, number, unit, args.top
            )
    finally:
        bench.close()
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    print(f"work folder (logs, callgrind files): {workdir}", file=sys.stderr)


if __name__ == "__main__":
    main()
