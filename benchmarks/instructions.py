"""Instructions per echo message, counted: the baseline's and the service's.

    BAKE/.venv/bin/python /path/to/benchmarks/instructions.py /tmp/bakes/NAME \\
        --sockets 1,100 --messages 2000 --json instructions-gthread.json

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
benchmarks/run.py bakes it). Each target (the baseline, then the service,
straight from gunicorn with the settings of profile_handshake.py) runs as
one gunicorn worker of the bake's worker class under valgrind's callgrind,
counting nothing until the sockets are open and have echoed a warm-up; then
`--messages` round trips on `--sockets` sockets at once (a raw-socket client,
outside valgrind), and the count stops.

What is counted: the worker's instructions in user space (the interpreter,
C extensions, libc), every thread of it. Not counted: the kernel's work (the
system calls, the switches between threads) and the time spent waiting. So
the figures compare the code each message runs through, not the rates. The
worker runs some 50 times slower under valgrind, and the other work it does
in the span (the service's once-a-second message counts, its pings) is
counted with the messages. `--top N` lists the functions (C-level: the
interpreter's, an extension's) whose counts differ most between the two.

Needs valgrind (Debian's package). Only loopback addresses are used.
"""

import argparse
import asyncio
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
    if target == "baseline":
        gunicorn = [str(c) for c in bench.baseline_command("baseline_app:app")]
        gunicorn[gunicorn.index("--workers") : gunicorn.index("--workers") + 2] = []
        gunicorn[gunicorn.index("--timeout") : gunicorn.index("--timeout") + 2] = []
        env = {**os.environ, "REDIS_URL": bench.settings["REDIS_URL"]}
        return [*valgrind, *gunicorn, *one_worker], ph.BENCHMARKS, env
    gunicorn = [bench.bin / "gunicorn", "-c", "gunicorn.conf.py"]
    gunicorn += ["--bind", "127.0.0.1:{port}"]
    return [*valgrind, *gunicorn, *one_worker], bench.bake, bench.env()


async def echo_on(port: int, path: str, token, sockets: int, each: int, between):
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


def count(bench: ph.Bench, target: str, sockets: int, each: int) -> Path:
    """Run one target under callgrind; the output file of its worker."""
    out = bench.workdir / f"callgrind-{target}-{sockets}"
    argv, folder, env = command(bench, target, out)
    port = ph.free_port()
    argv = [str(c).replace("{port}", str(port)) for c in argv]
    log = (bench.workdir / f"{target}-{sockets}.log").open("w")
    process = subprocess.Popen(
        argv, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    bench.processes.append(process)
    try:
        ph.wait_for_port(port, process, seconds=BOOT_SECONDS)
        deadline = time.monotonic() + BOOT_SECONDS
        while not (workers := ph.children(process.pid)):
            assert time.monotonic() < deadline, "no worker started"
            time.sleep(0.5)
        (worker,) = workers
        token = bench.token(port) if target == "service" else None
        path = "/ws/echo" if target == "service" else "/echo"

        def control(*options: str) -> None:
            subprocess.run(
                ["callgrind_control", *options, str(worker)],
                check=True,
                capture_output=True,
            )

        seconds = asyncio.run(
            echo_on(port, path, token, sockets, each, lambda: control("-i", "on"))
        )
        control("-i", "off")
        control("-d")
        print(f"{target}, {sockets} sockets: {seconds:.1f} s under valgrind")
    finally:
        ph.stop(process)
    dumps = sorted(bench.workdir.glob(f"{out.name}.{worker}.*"))
    assert dumps, f"callgrind wrote no dump for worker {worker}"
    return dumps[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bake", type=Path, help="a baked project with its .venv")
    parser.add_argument("--sockets", default="1,100", help="e.g. 1,100")
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--top", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="pf-instructions-"))
    bench = ph.Bench(args.bake.resolve(), workdir)
    report = {"worker_class": bench.worker_class, "messages": args.messages}
    try:
        for sockets in [int(n) for n in args.sockets.split(",")]:
            each = max(1, args.messages // sockets)
            messages = each * sockets
            files = {t: count(bench, t, sockets, each) for t in ("baseline", "service")}
            per_message = {t: callgrind_total(f) / messages for t, f in files.items()}
            ratio = per_message["service"] / per_message["baseline"]
            entry = {"messages": messages, "per_message": per_message, "ratio": ratio}
            print(
                f"{sockets} sockets, {messages} messages: instructions per message "
                f"baseline {per_message['baseline']:,.0f}, "
                f"service {per_message['service']:,.0f} (x{ratio:.3f})"
            )
            if args.top:
                counts = {t: by_function(f) for t, f in files.items()}
                names = set(counts["baseline"]) | set(counts["service"])
                differences = sorted(
                    (
                        (counts["service"].get(n, 0) - counts["baseline"].get(n, 0))
                        / messages,
                        n,
                    )
                    for n in names
                )
                entry["most_added"] = differences[::-1][: args.top]
                entry["most_saved"] = differences[: args.top]
                for difference, name in entry["most_added"]:
                    print(f"  {difference:+9,.0f}  {name}")
            report[f"sockets={sockets}"] = entry
    finally:
        bench.close()
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    print(f"work folder (logs, callgrind files): {workdir}", file=sys.stderr)


if __name__ == "__main__":
    main()
