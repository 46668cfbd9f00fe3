"""BENCHMARKS.md and latency.png from the results.json that benchmarks/run.py wrote.

    python benchmarks/report.py benchmarks/results.json

writes both beside the results file (or into --output-dir), without measuring
anything: to change the page, change this file and run it again. matplotlib
draws the chart (benchmarks/requirements.txt).

The page says where each figure came from: measured from outside (the
client's clock, /proc, the kernel's TCP table), or read from the service's
own GET /metrics (benchmarks/service_metrics.py). A results.json written
before run.py read /metrics has figures from outside only, and the page says
so.

The page is generated, every line of it: notes written by hand go in
benchmarks/NOTES.md, which the page includes as it is (the page's header
says so), so that writing the page again loses none of them.

Each figure measured in several rounds is given as the median with the
range over the rounds. A figure compared with something (the baseline, or a
target's threshold) is marked "unstable" when its range is wider than its
distance from what it is compared with: the rounds then disagree about
which side of it the figure is on.
"""

import argparse
import json
import math
import statistics
from pathlib import Path

# The hand-written notes the page includes.
NOTES = Path(__file__).resolve().parent / "NOTES.md"
# What each target is called in BENCHMARKS.md.
LABELS = {
    "baseline": "baseline",
    "app": "service, direct",
    "nginx": "service via nginx",
    "baseline_nginx": "baseline via nginx",
}


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


# Each figure of the page, where it comes from, and why from there: measured
# from outside, or read from the service's /metrics.
OUTSIDE = "outside"
METRICS = "/metrics"
SOURCES = [
    (
        "echo round trips/s, p50 and p99 latency",
        OUTSIDE,
        "the client's clock (loadtest.py)",
        "compared with the baseline, which has no /metrics; the service counts "
        "messages, not their round trips",
    ),
    (
        "CPU during the run",
        OUTSIDE,
        "/proc of gunicorn, nginx and the client",
        "/metrics has no process figures (prometheus-client's multiprocess "
        "mode leaves them out)",
    ),
    (
        "sockets held with no error, first failure, opened per second",
        OUTSIDE,
        "the client",
        "compared with the baseline",
    ),
    (
        "memory per socket (app and nginx)",
        OUTSIDE,
        "resident memory from /proc, before and during the hold",
        "/metrics has no memory figure, and none for nginx",
    ),
    (
        "the sockets the workers admit",
        METRICS,
        "websocket_capacity",
        "the service's own count, rather than working it out from the threads "
        "or worker_connections and the share kept for HTTP",
    ),
    (
        "sockets the service held at the end of the hold",
        METRICS,
        "websocket_connections",
        "the app's own count, beside the client's",
    ),
    (
        "handshakes by outcome",
        METRICS,
        "websocket_handshakes_total",
        "the client sees a status (503); the service knows which refusal it "
        "was (over_capacity, unavailable...)",
    ),
    (
        "fan-out: time to reach all, p50 arrival",
        OUTSIDE,
        "the client's clock, from the send to each subscriber's receipt",
        "compared with the baseline",
    ),
    (
        "fan-out: connections per worker",
        OUTSIDE,
        "the kernel's TCP table (/proc/net/tcp)",
        "/metrics adds the workers up",
    ),
    (
        "fan-out: the service's delivery time",
        METRICS,
        "chat_delivery_seconds, from publication to the write on each socket",
        "the service's own share, without the sender's way in, nginx and the "
        "client reading every socket; its buckets bound the quantiles",
    ),
]


def scraped(results: dict) -> bool:
    """Whether the run read the service's /metrics (runs before it did not)."""
    return any(
        "service_metrics" in row["report"]
        for section in results["variants"].values()
        for kind in ("capacity", "fanout")
        for row in section.get(kind, [])
    )


def sources_table(results: dict) -> list[str]:
    lines = []
    if not scraped(results):
        lines += [
            "This run did not read the service's /metrics: every figure on this "
            "page is from outside, and the ones marked /metrics below are missing.",
            "",
        ]
    lines += ["| figure | from | how | why from there |", "| --- | --- | --- | --- |"]
    for figure, source, how, why in SOURCES:
        lines.append(f"| {figure} | {source} | {how} | {why} |")
    return lines


def service_figures(report: dict) -> dict | None:
    """What /metrics said in this report, when it was read."""
    figures = report.get("service_metrics")
    if not figures or "error" in figures:
        return None
    return figures


def outcomes(handshakes: dict) -> str:
    counted = [(name, count) for name, count in handshakes.items() if count]
    return ", ".join(f"{name} {count:,.0f}" for name, count in counted) or "none"


def bucket_bound(delivery: dict, share: float) -> str:
    """The quantile `share` (0..1) of chat_delivery_seconds, as the upper bound
    of the histogram bucket that holds it: "≤ 25 ms"."""
    count = delivery.get("deliveries") or 0
    if not count:
        return "–"
    bounds = sorted((float(bound), n) for bound, n in delivery["buckets"].items())
    finite = [bound for bound, _ in bounds if math.isfinite(bound)]
    for bound, counted in bounds:
        if counted >= share * count:
            if math.isfinite(bound):
                return f"≤ {duration(bound)}"
            break
    return f"> {duration(max(finite, default=0))}"


def duration(seconds: float) -> str:
    return f"{seconds * 1000:g} ms" if seconds < 1 else f"{seconds:g} s"


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
        same_count = [r for r in rows if r["connections"] == row["connections"]]
        if row["target"] == "baseline":
            compared = "×1.00"
        elif row.get("round_order"):
            compared = ratio_with_range(paired_ratios(same_count, row["target"]))
        else:  # an older results.json: its rates are sorted, not paired
            compared = ratio(rate, reference.get("round_trips_per_second"))
        rate_text = (
            with_range(row["rates"])
            if row.get("round_order")
            else f"{number(rate)}{spread(row.get('rates', []))}"
        )
        lines.append(
            f"| {row['connections']:,} | {LABELS[row['target']]}{failed} "
            f"| {rate_text} "
            f"| {compared} "
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


def capacity_metrics_table(rows: list[dict], workers: int) -> list[str]:
    """The service's own count of the same runs (the baseline has none)."""
    lines = [
        "| permessage-deflate | target | the workers admit (per worker) "
        "| held at the end of the hold | handshakes by outcome |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    for row in rows:
        if row["target"] == "baseline":
            continue
        figures = service_figures(row["report"])
        if figures is None:
            error = row["report"].get("service_metrics", {}).get("error")
            lines.append(
                f"| {row['compression']} | {LABELS[row['target']]} "
                f"| {'not read: ' + error if error else 'not read'} | – | – |"
            )
            continue
        capacity = figures["capacity"]
        lines.append(
            f"| {row['compression']} | {LABELS[row['target']]} "
            f"| {capacity:,.0f} ({capacity / workers:,.0f}) "
            f"| {figures['connections']:,.0f} "
            f"| {outcomes(figures['handshakes'])} |"
        )
    return lines


def fanout_metrics_table(results: dict) -> list[str]:
    lines = [
        "| worker class | target | chat sockets held | writes counted "
        "| mean | half within | 99% within | all within |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for worker_class, section in results["variants"].items():
        for row in section.get("fanout", []):
            if row["target"] == "baseline":
                continue
            figures = service_figures(row["report"])
            if figures is None:
                lines.append(
                    f"| {worker_class} | {LABELS[row['target']]} "
                    "| not read | – | – | – | – | – |"
                )
                continue
            count = figures["deliveries"]
            mean = figures["seconds"] / count * 1000 if count else None
            lines.append(
                f"| {worker_class} | {LABELS[row['target']]} "
                f"| {figures['connections']:,.0f} "
                f"| {count:,.0f} of {figures['expected']:,} "
                f"| {number(mean, 1, ' ms')} "
                f"| {bucket_bound(figures, 0.5)} | {bucket_bound(figures, 0.99)} "
                f"| {bucket_bound(figures, 1.0)} |"
            )
    return lines


def fanout_table(results: dict) -> list[str]:
    lines = [
        "| worker class | target | subscribers reached | per worker "
        "| time to reach all (median) | vs baseline | p50 arrival | vs baseline |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for worker_class, section in results["variants"].items():
        rows = section.get("fanout", [])
        if not rows:
            continue
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


# --- medians, ranges and the targets ---------------------------------------------


def finite(values) -> list[float]:
    return [value for value in values if value is not None]


def median(values) -> float | None:
    """The median of the rounds that gave a figure (None: none did)."""
    values = finite(values)
    return statistics.median(values) if values else None


def unstable(values, reference: float) -> bool:
    """Whether the rounds' range is wider than the median's distance from
    `reference` (the baseline's ×1, or a target's threshold)."""
    values = finite(values)
    if len(values) < 2:
        return False
    return max(values) - min(values) > abs(statistics.median(values) - reference)


def with_range(values, digits=0, unit="", prefix="") -> str:
    """ "median (low–high)" over the rounds, or the one value."""
    values = finite(values)
    if not values:
        return "–"

    def shown(value: float) -> str:
        # Infinity: a round that never got there (a storm's client not back).
        return "never" if math.isinf(value) else f"{value:,.{digits}f}"

    middle = statistics.median(values)
    text = f"{prefix}{shown(middle)}{'' if math.isinf(middle) else unit}"
    if len(values) > 1 and min(values) != max(values):
        text += f" ({shown(min(values))}–{shown(max(values))})"
    return text


def ratio_with_range(ratios, reference: float = 1.0) -> str:
    """×median (low–high) of per-round ratios, marked when unstable."""
    text = with_range(ratios, 2, prefix="×")
    if unstable(ratios, reference):
        text += " unstable"
    return text


def paired_ratios(rows: list[dict], target: str, base: str = "baseline") -> list:
    """Each round's rate of `target` over the baseline's in the same round
    (rows keep their rates in the order of the rounds)."""
    by_target = {row["target"]: row.get("rates", []) for row in rows}
    ours, theirs = by_target.get(target, []), by_target.get(base, [])
    return [a / b if a and b else None for a, b in zip(ours, theirs, strict=False)]


def rounds_of(results: dict) -> int:
    scale = results["scale"]
    return scale.get("rounds", scale.get("echo_rounds", 1))


# The targets the service is held to, each: what it is, per round values,
# the threshold, and whether above (">=") or below ("<=", "<") meets it.
ECHO_RATIO = {"nginx": 0.9, "app": 0.95}
HANDSHAKE_RATIO = 0.8
IDLE_SOCKET_KB = {"gevent": 40, "gthread": 60}
STORM_SECONDS = 20
FANOUT_MEDIAN_MS = 500
FANOUT_P99_MS = 1000
CLUSTER_SOCKETS = 20_000


def meets(value: float | None, comparison: str, threshold: float) -> bool:
    if value is None:
        return False
    if comparison == ">=":
        return value >= threshold
    if comparison == "<=":
        return value <= threshold
    return value < threshold


def target_row(
    name: str,
    values: list,
    comparison: str,
    threshold: float,
    measured: str,
    also: bool = True,
) -> str:
    """One line of the Targets table; `also`: a condition besides the
    threshold (no failure), which every round must meet."""
    middle = median(values)
    if not finite(values):
        return f"| {name} | {measured or 'not measured'} | – | – | – |"
    met = "yes" if also and meets(middle, comparison, threshold) else "no"
    count = len(values)
    if count < 2:
        stability = "one round"
    else:
        stability = "unstable" if unstable(values, threshold) else "stable"
    return f"| {name} | {measured} | {count} | {met} | {stability} |"


def targets(results: dict) -> list[str]:
    lines = [
        "| target | measured: median (range over the rounds) | rounds | met | stable |",
        "| --- | --- | ---: | --- | --- |",
    ]
    variants = results["variants"]
    gevent = variants.get("gevent", {})
    scale = results["scale"]
    at = scale.get("target_connections", 100)

    rows = gevent.get("handshakes", [])
    ratios = paired_ratios(rows, "nginx")
    rates = {row["target"]: row.get("rates", []) for row in rows}
    lines.append(
        target_row(
            f"gevent: handshakes per second through nginx >= ×{HANDSHAKE_RATIO} "
            "of the baseline's (direct)",
            ratios,
            ">=",
            HANDSHAKE_RATIO,
            f"{with_range(ratios, 2, prefix='×')}: "
            f"{with_range(rates.get('nginx', []))} vs "
            f"{with_range(rates.get('baseline', []))} a second"
            f"{nginx_alone(rows)}"
            if ratios
            else "",
        )
    )
    lines.append(storm_target(gevent.get("storm", []), scale))
    for worker_class in ("gthread", "gevent"):
        rows = [
            row
            for row in variants.get(worker_class, {}).get("echo", [])
            if row["connections"] == at
        ]
        for target, label in (("nginx", "through nginx"), ("app", "straight")):
            if rows and rows[0].get("round_order"):
                ratios = paired_ratios(rows, target)
            else:  # an older results.json: its rates are sorted, not paired
                ratios = single_ratio(rows, target)
            rates = {
                row["target"]: row.get("rates", [])
                if row.get("round_order")
                else [row["report"].get("round_trips_per_second")]
                for row in rows
            }
            lines.append(
                target_row(
                    f"{worker_class}: echo {label}, {at:,} connections, "
                    f">= ×{ECHO_RATIO[target]} of the baseline's round trips",
                    ratios,
                    ">=",
                    ECHO_RATIO[target],
                    f"{with_range(ratios, 2, prefix='×')}: "
                    f"{with_range(rates.get(target, []))} vs "
                    f"{with_range(rates.get('baseline', []))} round trips/s"
                    f"{nginx_alone(rows) if target == 'nginx' else ''}"
                    if finite(ratios)
                    else "",
                )
            )
    for worker_class in ("gevent", "gthread"):
        sizes = idle_socket_kb(variants.get(worker_class, {}))
        limit = IDLE_SOCKET_KB[worker_class]
        lines.append(
            target_row(
                f"{worker_class}: memory per idle socket, permessage-deflate off, "
                f"<= {limit} KB",
                sizes,
                "<=",
                limit,
                with_range(sizes, 1, " KB"),
            )
        )
    lines += fanout_targets(gevent.get("fanout_large", []), scale)
    lines.append(cluster_target(gevent.get("cluster", []), scale))
    return lines


def nginx_alone(rows: list[dict]) -> str:
    """What the baseline itself reaches behind the same nginx, when measured:
    what nginx alone costs on this machine."""
    ratios = paired_ratios(rows, "baseline_nginx")
    if not finite(ratios):
        return ""
    measured = with_range(ratios, 2, prefix="×")
    return f"; the baseline itself through the same nginx: {measured}"


def single_ratio(rows: list[dict], target: str) -> list:
    """An older results.json: the median round's ratio only."""
    by = {row["target"]: row["report"].get("round_trips_per_second") for row in rows}
    if by.get(target) and by.get("baseline"):
        return [by[target] / by["baseline"]]
    return []


def idle_socket_kb(section: dict) -> list:
    """Per round, the service's memory per idle socket, deflate off."""
    for row in section.get("memory", []):
        if (row["target"], row["compression"]) == ("nginx", "off"):
            return [
                None if value is None else value / 1024
                for value in row["per_socket_bytes"]
            ]
    for row in section.get("capacity", []):  # an older results.json
        if (row["target"], row["compression"]) == ("nginx", "off"):
            return [kilobytes(row["report"])]
    return []


def storm_back(report: dict) -> float | None:
    """Seconds until every client was back; infinity when some never were."""
    if report.get("open_failures") or "all_back" not in report:
        return None
    return report["all_back_seconds"] if report["all_back"] else math.inf


def storm_clean(report: dict) -> bool:
    return bool(
        report.get("all_back")
        and not report.get("open_failures")
        and not report.get("failed")
        and report.get("all_1001")
    )


def storm_target(rows: list[dict], scale: dict) -> str:
    reports = [row["report"] for row in rows]
    # A round storm.py wrote no report of brought nobody back as far as is known.
    seconds = [
        math.inf if "error" in row else storm_back(row["report"]) for row in rows
    ]
    clean = sum(storm_clean(report) for report in reports)
    sockets = scale.get("storm_sockets", 10_000)
    measured = ""
    if finite(seconds):
        measured = (
            f"{with_range(seconds, 1, ' s')}; every client back, none failed and "
            f"every close 1001 in {clean} of {len(reports)} rounds"
        )
    return target_row(
        f"gevent: {sockets:,} sockets closed with 1001 by a deploy all back and "
        f"echoing within {STORM_SECONDS} s, no failure",
        seconds,
        "<=",
        STORM_SECONDS,
        measured,
        also=bool(reports) and clean == len(reports),
    )


def fanout_all_ms(report: dict, key: str) -> float | None:
    """A round's figure; infinity when some subscriber never got a message."""
    if not report.get("subscribers"):
        return None
    if report.get("reached_min", 0) < report.get("asked", 0):
        return math.inf
    return report.get(key)


def fanout_targets(rows: list[dict], scale: dict) -> list[str]:
    reports = [row["report"] for row in rows]
    count = scale.get("large_subscribers", 10_000)
    complete = sum(1 for r in reports if r.get("reached_min", 0) == r.get("asked", -1))
    lines = []
    for key, threshold, what in (
        ("all_ms_median", FANOUT_MEDIAN_MS, "median time to reach all"),
        ("all_ms_p99", FANOUT_P99_MS, "p99 time to reach all"),
    ):
        values = [fanout_all_ms(report, key) for report in reports]
        measured = ""
        if finite(values):
            measured = (
                f"{with_range(values, 0, ' ms')}; every subscriber reached in "
                f"{complete} of {len(reports)} rounds"
            )
        lines.append(
            target_row(
                f"gevent: chat fan-out to {count:,} subscribers, two workers, "
                f"Redis: {what} < {threshold:,} ms",
                values,
                "<",
                threshold,
                measured,
                also=bool(reports) and complete == len(reports),
            )
        )
    return lines


def cluster_target(rows: list[dict], scale: dict) -> str:
    reports = [row["report"] for row in rows]
    count = scale.get("cluster_sockets", CLUSTER_SOCKETS)
    values = [held(report) for report in reports]
    measured = ""
    if reports:
        failures = sorted({first_failure(report) for report in reports})
        measured = (
            f"{with_range(values)} held with no error (of {count:,} tried); "
            f"first failure: {', '.join(failures)}"
        )
    return target_row(
        f"gevent: {count:,} sockets held across two instances (two gunicorns) "
        "behind one nginx",
        values,
        ">=",
        count,
        measured,
    )


def write_chart(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = {
        worker_class: section
        for worker_class, section in results["variants"].items()
        if section.get("echo")
    }
    figure, axes = plt.subplots(
        1, len(variants), figsize=(4.5 * len(variants), 3.6), sharey=True, squeeze=False
    )
    colours = {"baseline": "#777777", "app": "#1f77b4", "nginx": "#d62728"}
    for axis, (worker_class, section) in zip(axes[0], variants.items(), strict=True):
        for target, colour in colours.items():
            rows = sorted(
                (r for r in section.get("echo", []) if r["target"] == target),
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


def handshake_table(rows: list[dict]) -> list[str]:
    lines = [
        "| target | handshakes/s | vs baseline | p50 ms | p99 ms "
        "| CPU per handshake, gunicorn + nginx | CPU during the run (share of one "
        "core) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in sorted(rows, key=lambda r: list(LABELS).index(r["target"])):
        report = row["report"]
        compared = (
            "×1.00"
            if row["target"] == "baseline"
            else ratio_with_range(paired_ratios(rows, row["target"]))
        )
        failed = f" ({report['failed']} failed)" if report.get("failed") else ""
        lines.append(
            f"| {LABELS[row['target']]}{failed} | {with_range(row['rates'])} "
            f"| {compared} | {number(report['handshake_ms']['p50'], 1)} "
            f"| {number(report['handshake_ms']['p99'], 1)} "
            f"| {with_range(row.get('cpu_ms', []), 2, ' ms')} | {cpu(report)} |"
        )
    return lines


def memory_table(rows: list[dict]) -> list[str]:
    lines = [
        "| permessage-deflate | target | idle sockets | rounds "
        "| app memory per socket | vs baseline | nginx per socket |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        base = next(
            r
            for r in rows
            if r["target"] == "baseline" and r["compression"] == row["compression"]
        )
        ours, theirs = row["per_socket_bytes"], base["per_socket_bytes"]
        ratios = [
            a / b if a and b else None for a, b in zip(ours, theirs, strict=False)
        ]
        compared = "×1.00" if row["target"] == "baseline" else ratio_with_range(ratios)
        kb = [None if v is None else v / 1024 for v in ours]
        proxy = [
            None if v is None else v / 1024
            for v in row.get("proxy_per_socket_bytes", [])
        ]
        short = [h for h in row["held"] if h < row["sockets"]]
        note = f" (held {min(short):,} in a round)" if short else ""
        lines.append(
            f"| {row['compression']} | {LABELS[row['target']]}{note} "
            f"| {row['sockets']:,} | {len(ours)} | {with_range(kb, 1, ' KB')} "
            f"| {compared} | {with_range(proxy, 1, ' KB')} |"
        )
    return lines


def fanout_large_table(rows: list[dict]) -> list[str]:
    lines = [
        "| round | subscribers reached | per worker | time to reach all: median "
        "| slowest message | p50 arrival (median) | the service's writes, all within "
        "| client CPU |",
        "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        report = row["report"]
        reached = f"{report.get('reached_min', 0):,} of {report.get('asked', 0):,}"
        if report.get("error"):
            reached += f" (the sender's socket: {report['error']})"
        if report.get("failures"):
            reached += " (" + failure_list(report["failures"]) + ")"
        spread = " + ".join(str(n) for n in report.get("per_worker", [])) or "–"
        figures = service_figures(report)
        written = bucket_bound(figures, 1.0) if figures else "not read"
        lines.append(
            f"| {row['round']} | {reached} | {spread} "
            f"| {number(report.get('all_ms_median'), 0, ' ms')} "
            f"| {number(report.get('all_ms_p99'), 0, ' ms')} "
            f"| {number(report.get('p50_ms_median'), 0, ' ms')} | {written} "
            f"| {number(report.get('client_cpu_seconds'), 1, ' s')} |"
        )
    return lines


def failure_list(failures: dict) -> str:
    return ", ".join(f"{reason}: {count:,}" for reason, count in failures.items())


def storm_table(rows: list[dict]) -> list[str]:
    lines = [
        "| round | sockets | all back and echoing | back, p50 / p99 after SIGTERM "
        "| storm's closes | not back | attempts refused or failed "
        "| peak handshakes/s | client CPU | dropped by a full accept queue |",
        "| ---: | ---: | ---: | ---: | --- | --- | --- | ---: | ---: | ---: |",
    ]
    for row in rows:
        report = row["report"]
        if "error" in row:
            lines.append(
                f"| {row['round']} | – | storm.py wrote no report "
                f"({row['exit_status']}) | – | – | – | – | – | – | – |"
            )
            continue
        if report.get("open_failures"):
            lines.append(
                f"| {row['round']} | {report.get('opened', 0):,} of "
                f"{report.get('sockets', 0):,} opened "
                f"({failure_list(report['open_failures'])}): no storm "
                "| – | – | – | – | – | – | – | – |"
            )
            continue
        back = report.get("back_seconds") or {}
        when = (
            f"{report['all_back_seconds']:.1f} s"
            if report.get("all_back")
            else f"not within {report.get('deadline_seconds', 0):g} s"
        )
        missing = failure_list(report.get("failed_by_reason") or {}) or "none"
        refused = report.get("failed_attempts", 0)
        reasons = report.get("failed_attempts_by_reason") or {}
        if reasons:
            refused = f"{refused:,} ({failure_list(reasons)})"
        codes = failure_list(report.get("close_codes") or {}) or "none"
        lines.append(
            f"| {row['round']} | {report.get('sockets', 0):,} | {when} "
            f"| {number(back.get('p50'), 1, ' s')} / "
            f"{number(back.get('p99'), 1, ' s')} "
            f"| {codes} | {missing} | {refused} "
            f"| {report.get('peak_handshakes_per_second', '–')} "
            f"| {percent(report.get('client_cpu_share'))} "
            f"| {number(report.get('listen_overflows'))} |"
        )
    return lines


def percent(share) -> str:
    return "–" if share is None else f"{share:.0%}"


def cluster_table(rows: list[dict]) -> list[str]:
    lines = [
        "| round | tried | held with no error | first failure "
        "| each instance held (/metrics) | opened per second "
        "| app memory per socket | nginx per socket | nginx workers "
        "| client processes |",
        "| ---: | ---: | ---: | --- | --- | ---: | ---: | ---: | --- | ---: |",
    ]
    for row in rows:
        report = row["report"]
        figures = service_figures(report)
        instances = (figures or {}).get("instances") or []
        each = (
            " + ".join(f"{one['connections']:,.0f}" for one in instances)
            if instances
            else "not read"
        )
        lines.append(
            f"| {row['round']} | {row['tried']:,} | {held(report):,} "
            f"| {first_failure(report)} | {each} "
            f"| {number(opening_rate(report))} "
            f"| {number(kilobytes(report), 1, ' KB')} "
            f"| {number(kilobytes(report, 'proxy'), 1, ' KB')} "
            f"| {nginx_workers(row.get('nginx', {}))} "
            f"| {report.get('client_processes', 1)} |"
        )
    return lines


def nginx_workers(settings: dict) -> str:
    workers = settings.get("worker_processes")
    return f"{workers}, reuseport" if workers else "one per core"


SECTION_NAMES = {
    "echo": "echo and handshakes",
    "capacity": "most sockets held",
    "memory": "memory per idle socket",
    "fanout": "chat fan-out",
    "fanout_large": "chat fan-out, many subscribers",
    "storm": "reconnect storm",
    "cluster": "two instances",
}


def sections_table(results: dict) -> list[str]:
    lines = [
        "| worker class | section | minutes | CPU other work used (share of the "
        "machine) | load average before, after |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    for row in results.get("sections", []):
        lines.append(
            f"| {row['worker_class']} | "
            f"{SECTION_NAMES.get(row['section'], row['section'])} "
            f"| {row['seconds'] / 60:.1f} | {row['others_cpu_share']:.0%} "
            f"| {row['load_before']:.1f}, {row['load_after']:.1f} |"
        )
    return lines


def hand_written_notes() -> list[str]:
    """NOTES.md as it is, for the page to include."""
    if not NOTES.is_file():
        return []
    return [NOTES.read_text().rstrip(), ""]


def write_markdown(results: dict, path: Path, chart_name: str) -> None:
    info, servers = results["machine"], results["servers"]
    scale = results["scale"]
    rounds = rounds_of(results)
    lines = [
        "# Benchmarks",
        "",
        "<!-- Written by benchmarks/report.py from results.json: edit report.py, "
        "or NOTES.md for notes by hand, not this page. -->",
        "",
        "The generated service against a baseline, measured in one run on one "
        "machine. The baseline is Flask-Sock's tutorial echo app "
        "([baseline_app.py](baseline_app.py)) under gunicorn with the same "
        "settings, without nginx. **Service via nginx** is the generated "
        "service (`broadcast = redis`) behind the generated nginx "
        "configuration, the way it is deployed; **service, direct** is the "
        "same service straight from gunicorn, to tell nginx's share from the "
        "app's; **baseline via nginx** is the baseline behind the same nginx "
        "(echo at the targets' connection count, and handshakes): what nginx "
        "alone costs on this machine, and so the most that an app doing at "
        "least the baseline's work can reach through it. Every figure has its "
        "ratio to the baseline's: above ×1 means "
        "more (round trips, sockets, memory) or slower (latency). A figure "
        "measured in rounds is the median, with the range over the rounds in "
        "brackets; a ratio or a target is marked unstable when that range is "
        "wider than its distance from the baseline's ×1 or from the target. "
        "The raw reports are in results.json; `python benchmarks/report.py "
        "benchmarks/results.json` writes this page and the chart again. This "
        "page is generated: notes written by hand are in [NOTES.md](NOTES.md), "
        "which it includes.",
        "",
        f"Command: `{results['command']}` · {results['date']} · template "
        f"{results['commit']} · {results['minutes']:.0f} minutes"
        + (
            " · **--quick: small numbers, a smoke test only**"
            if results["quick"]
            else ""
        ),
        "",
        *hand_written_notes(),
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
                f"| accept queue | net.core.somaxconn {info['somaxconn']:,} during "
                "the run (the generated docs/capacity.md's setting): gunicorn's "
                "queue holds every socket of an instance |"
            ]
            if info.get("somaxconn")
            else []
        ),
        *(
            [
                f"| other work | {results['others_cpu_share']:.0%} of the machine's "
                "CPU went to processes other than the run's during it (each "
                "section's share below) |"
            ]
            if "others_cpu_share" in results
            else []
        ),
        "| versions | "
        + ", ".join(f"{k} {v}" for k, v in results["versions"].items())
        + " |",
        f"| gunicorn | {servers['workers']} workers; gthread "
        f"{servers['threads']} threads, gevent "
        f"{servers['worker_connections']:,} worker_connections (the service: "
        "`WEB_CONCURRENCY`, `GUNICORN_THREADS`, `GUNICORN_WORKER_CONNECTIONS`); "
        f"timeout {servers['timeout']} s, keep-alive {servers['keepalive']} s |",
        f"| nginx | the generated config, `worker_connections` "
        f"{servers['nginx_worker_connections']:,} and `worker_rlimit_nofile` "
        f"{servers['nginx_rlimit_nofile']:,} (two instances: their own, in "
        "their table) |",
        "| service | `APP_ENV=production`, SQLite, `broadcast = redis` with a "
        "redis-server of the run's own, access log and one log line per socket |",
        "| client | one Python process (benchmarks/loadtest.py, websockets' asyncio "
        "client; raw sockets for handshakes per second and the fan-out's "
        "subscribers; two instances: as many processes as the open-file limit "
        "needs) on the same machine; bearer token on every handshake to the "
        "service |",
        "",
        "The client, nginx and gunicorn share the same cores, so every figure is "
        "lower than on separate machines; the CPU column says who was busy. "
        "A load average above zero before the run means other work shared the "
        "machine too.",
        "",
    ]
    if results.get("sections"):
        lines += [
            "Other work during each section: the CPU the whole machine was busy "
            "less what the run's own processes used (/proc), as a share of all "
            "its cores.",
            "",
            *sections_table(results),
            "",
        ]
    for error in results.get("errors", []):
        lines += [
            f"**{error['worker_class']}, {error['section']}: not measured.** "
            f"The section failed: `{error['error'].splitlines()[0][:300]}`",
            "",
        ]
    lines += [
        "## Where each figure comes from",
        "",
        "Measured from outside, the same way for the baseline and the service, "
        "or read from the service's own GET /metrics on gunicorn's port "
        "([service_metrics.py](service_metrics.py), once before and once after "
        "each measurement, outside its timed span). The baseline has no "
        "/metrics, so every figure compared with it is from outside; a figure "
        "from /metrics stands beside those, for the service only.",
        "",
        *sources_table(results),
        "",
        "## Targets",
        "",
        "Met: the median over the rounds is on the right side of the target "
        "(and, where the target says so, no round failed). Stable: the range "
        "over the rounds is narrower than the median's distance from the "
        "target; unstable, the rounds disagree on which side it is.",
        "",
        *targets(results),
        "",
    ]
    for worker_class, section in results["variants"].items():
        if any(section.get(name) for name in ("echo", "capacity", "memory")):
            lines += [f"## {worker_class}", ""]
        if section.get("echo"):
            lines += [
                "### Echo round trips",
                "",
                "Each connection sends 32 bytes and waits for them to come back, "
                f"again and again, for {scale['echo_seconds']:g} s; "
                "permessage-deflate off. The three targets take turns on the "
                f"same servers, {rounds} rounds; a rate is the median with the "
                "range, its ratio the median of each round's ratio to the "
                "baseline's in the same round; latency and CPU are the median "
                "round's. From outside: the client's clock, CPU from /proc.",
                "",
                *echo_table(section["echo"]),
                "",
            ]
        if section.get("handshakes"):
            lines += [
                "### Handshakes per second",
                "",
                f"{scale.get('handshakes', 0):,} handshakes per target and round, "
                f"{scale.get('handshake_concurrency', 0)} at a time: each a TCP "
                "connection, the upgrade (with the bearer token, to the service), "
                "and a close with 1000 at once; the next starts when the server "
                "has closed the connection. The targets take turns with the echo "
                f"rounds, {rounds} rounds. CPU per handshake: gunicorn's "
                "(and nginx's) CPU time over the handshakes, from /proc, which "
                "other work on the machine blurs less than a rate. From "
                "outside: a raw-socket client's clock.",
                "",
                *handshake_table(section["handshakes"]),
                "",
            ]
        if section.get("capacity"):
            lines += [
                "### Most sockets held",
                "",
                "Sockets opened at up to 1,000 per second, each checked with one "
                f"echo, held idle for {scale['hold_seconds']:g} s and checked "
                "again, until the first failure or the number tried; a fresh "
                "server each time. Memory per socket is the growth of the "
                "resident memory of gunicorn (master and workers) divided by the "
                "sockets held. From outside: the client, memory from /proc.",
                "",
                *capacity_table(section["capacity"]),
                "",
            ]
            if scraped(results):
                lines += [
                    "From /metrics, the service's own count in the same runs: the "
                    "sockets its workers admit together (websocket_capacity), "
                    "those it held at the end of the hold "
                    "(websocket_connections), and the handshakes of the run by "
                    "outcome (websocket_handshakes_total), warm-up excluded.",
                    "",
                    *capacity_metrics_table(section["capacity"], servers["workers"]),
                    "",
                ]
        if section.get("memory"):
            lines += [
                "### Memory per idle socket",
                "",
                "The same measure on fewer sockets, in rounds: the baseline and "
                "the service via nginx take turns, a fresh server each time; "
                "permessage-deflate on is offered the way browsers offer it. "
                "From /proc.",
                "",
                *memory_table(section["memory"]),
                "",
            ]
    if any(section.get("fanout") for section in results["variants"].values()):
        lines += [
            "## Chat fan-out",
            "",
            f"{scale['subscribers']:,} chat subscribers on two workers and "
            "one sender; each message is timed from the send until it reaches "
            f"each subscriber, {scale['fanout_messages']} messages. The service "
            "goes through nginx and its Redis hub (one subscription per worker); "
            "the baseline is the tutorial app with the obvious Redis version of "
            "a chat route (one subscription per socket, in baseline_app.py), "
            "without nginx. Per worker: connections each gunicorn worker held. "
            "From outside: the client's clock, the kernel's TCP table.",
            "",
            *fanout_table(results),
            "",
        ]
        if scraped(results):
            lines += [
                "From /metrics, the service's own delivery time over the same "
                "timed messages (chat_delivery_seconds): from a message's "
                "publication, in the worker that took it, to its write on each "
                "chat socket, the sender's included. It leaves out the sender's "
                "way in, nginx and the client reading every socket; its buckets "
                "bound each quantile (≤ the bucket's upper bound) and the sum "
                "gives the mean.",
                "",
                *fanout_metrics_table(results),
                "",
            ]
    gevent = results["variants"].get("gevent", {})
    if gevent.get("fanout_large"):
        lines += [
            f"## Chat fan-out to {scale['large_subscribers']:,} subscribers (gevent)",
            "",
            f"The same measure at {scale['large_subscribers']:,} subscribers, "
            "through nginx to one gunicorn of two workers and Redis, "
            f"{scale['large_messages']} timed messages a round, fresh servers "
            "each round. Slowest message: the time to reach all of the round's "
            "slowest message (its p99 over fewer than 100 messages). The "
            "subscribers are raw sockets read by one client process (fanout.py), "
            "whose CPU over the timed messages is given. From outside, beside "
            "the service's own delivery time (chat_delivery_seconds).",
            "",
            *fanout_large_table(gevent["fanout_large"]),
            "",
        ]
    if gevent.get("storm"):
        lines += [
            "## Reconnect storm (gevent)",
            "",
            "[storm.py](storm.py): "
            f"{scale.get('storm_sockets', 0):,} sockets through nginx, then "
            "gunicorn restarted as a deploy does (SIGTERM, a new one on the same "
            "port); every client reconnects with full-jitter backoff and echoes "
            "once. A round: its own servers and redis-server. All back: from "
            "SIGTERM until the last client had echoed.",
            "",
            *storm_table(gevent["storm"]),
            "",
        ]
    if gevent.get("cluster"):
        lines += [
            f"## {scale.get('cluster_sockets', 0):,} sockets on two instances (gevent)",
            "",
            "Two gunicorns, each its own master and two workers, sharing the "
            "run's redis-server, behind one nginx whose upstream names both "
            "(least_conn, as generated); idle sockets opened as for the most "
            "sockets held, until the first failure. Each instance's count is "
            "from its own /metrics; memory is both instances' together. Where "
            "a process may not hold every socket (the open-file limit), nginx "
            "runs as many workers as that limit needs, each listening with "
            "reuseport so that the kernel shares the connections among them "
            "evenly, and the client shares the sockets among processes.",
            "",
            *cluster_table(gevent["cluster"]),
            "",
        ]
    if any(section.get("echo") for section in results["variants"].values()):
        lines += [
            "## Latency against connections",
            "",
            f"![echo latency against connection count]({chart_name})",
            "",
        ]
    lines += [
        "## What limits the numbers",
        "",
        *notes(results),
    ]
    path.write_text("\n".join(lines).rstrip() + "\n")


# Why the service refused a handshake, by its outcome in /metrics.
OUTCOME_CAUSES = {
    "over_capacity": "the service's capacity guard refused the socket: a worker "
    "had no room left (its threads or worker_connections, less the reserve kept "
    "for HTTP), and the busier of the two workers fills first",
    "unavailable": "the service could not reach Redis to count the user's sockets",
    "over_user_limit": "the user held WS_MAX_SOCKETS_PER_USER sockets already",
    "unauthenticated": "the bearer token was not accepted",
    "forbidden_origin": "the Origin was not accepted",
}
# Why a socket failed, by what the client saw. A 503 has two causes in the
# service; without /metrics (a run before it was read) the likelier is given.
FAILURE_CAUSES = {
    "HTTP 503": OUTCOME_CAUSES["over_capacity"]
    + " (inferred from the status: this run did not read /metrics)",
    "timeout (handshake)": "the server took no more handshakes in time: all of "
    "its threads were busy, and gthread queues what it cannot serve",
    "EMFILE (handshake)": "the client's open-file limit",
}


def notes(results: dict) -> list[str]:
    """What the figures say about their own limits, in sentences."""
    cores = results["machine"]["cores"]
    lines = []
    others = results.get("others_cpu_share")
    load = f"The load average was {results['load_before']:.1f} before the run"
    if others is not None and others <= 0.05 and results["load_before"] > 0.5:
        # The load average lags: what ran before the run, not beside it.
        lines.append(
            f"- **Other work.** {load} on {cores} cores, but other processes used "
            f"{others:.0%} of its CPU during the run: the machine was the run's."
        )
    elif results["load_before"] > 0.5 or (others or 0) > 0.05:
        during = (
            f", and other processes used {others:.0%} of its CPU during the run"
            if others is not None
            else ""
        )
        lines.append(
            f"- **Other work.** {load} on {cores} cores{during}: absolute figures "
            "are lower than on a quiet machine, and ratios taken minutes apart "
            "carry that noise."
        )
    busy = [row for row in results.get("sections", []) if row["others_cpu_share"] > 0.1]
    if busy:
        named = ", ".join(
            f"{row['worker_class']} {SECTION_NAMES.get(row['section'], row['section'])}"
            f" {row['others_cpu_share']:.0%}"
            for row in busy
        )
        lines.append(
            "- **Sections that shared the machine.** Other work used more than "
            f"a tenth of the CPU during these: {named}. Their figures, and "
            "above all their ranges, carry that noise; a figure marked "
            "unstable there is worth measuring again on a quiet machine."
        )
    for worker_class, section in results["variants"].items():
        lines += echo_notes(worker_class, section.get("echo", []), cores)
        lines += capacity_notes(
            worker_class, section.get("capacity", []), section.get("memory")
        )
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

    same_count = [row for row in rows if row["connections"] == middle]

    def share_of(target: str) -> float:
        """As the table has it: the median of each round's ratio to the
        baseline's in the same round, not two median rounds' rates."""
        if same_count[0].get("round_order"):
            paired = median(paired_ratios(same_count, target))
            if paired is not None:
                return paired
        return at[target]["round_trips_per_second"] / base["round_trips_per_second"]

    direct = at.get("app")
    text = (
        f"- **{worker_class}, echo at {middle:,} connections.** The baseline made "
        f"{number(base['round_trips_per_second'])} round trips/s ({cpu(base)})"
    )
    if direct:
        share = share_of("app")
        text += f"; the service straight from gunicorn ×{share:.2f} ({cpu(direct)})"
    share = share_of("nginx")
    text += (
        f"; through nginx ×{share:.2f} ({cpu(proxied)}), {busy(proxied):.0%} of "
        f"the {cores * 100}% the machine has"
    )
    if "baseline_nginx" in at:
        share = share_of("baseline_nginx")
        text += (
            f"; the baseline itself through the same nginx ×{share:.2f} "
            f"({cpu(at['baseline_nginx'])})"
        )
    text += ". "
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


def capacity_notes(
    worker_class: str, rows: list[dict], memory: list[dict] | None = None
) -> list[str]:
    lines = []
    for row in rows:
        if row["compression"] != "off":
            continue
        report = row["report"]
        reason = first_failure(report)
        figures = service_figures(report)
        refused = {
            outcome: count
            for outcome, count in (figures or {}).get("handshakes", {}).items()
            if outcome != "accepted" and count
        }
        if reason == "none":
            cause = f"nothing failed up to the {row['tried']:,} tried"
        elif reason.startswith("HTTP") and refused:
            cause = "; ".join(
                f"/metrics counts {count:,.0f} refused as {outcome}: "
                f"{OUTCOME_CAUSES.get(outcome, outcome)}"
                for outcome, count in refused.items()
            )
        else:
            cause = FAILURE_CAUSES.get(reason, reason)
        text = (
            f"- **{worker_class}, {LABELS[row['target']]}: "
            f"{held(report):,} sockets** held with no error. First failure: "
            f"{reason}; {cause}."
        )
        if figures:
            text += (
                f" Its workers admit {figures['capacity']:,.0f} together "
                f"(websocket_capacity) and held {figures['connections']:,.0f} "
                "at the end of the hold (websocket_connections), by /metrics."
            )
        lines.append(text)
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
    if memory:  # measured in rounds: the median round's
        by_key = {(r["target"], r["compression"]): r["report"] for r in memory}
        off, on = by_key.get(("nginx", "off")), by_key.get(("nginx", "on"))
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
        at = {row["target"]: row["report"] for row in section.get("fanout", [])}
        base, proxied = at.get("baseline", {}), at.get("nginx", {})
        if base.get("all_ms_median") and proxied.get("all_ms_median"):
            lines.append(
                f"- **{worker_class}, fan-out.** One message reached "
                f"{proxied['reached_min']:,} subscribers in "
                f"{proxied['all_ms_median']:.0f} ms through nginx (the baseline: "
                f"{base['all_ms_median']:.0f} ms to {base['reached_min']:,}). The "
                "service's hub reads each message from Redis once per worker and "
                "writes it to every socket of that worker, one after another; the "
                "baseline has Redis write it once per socket." + delivery_note(proxied)
            )
    return lines


def delivery_note(report: dict) -> str:
    """The service's own delivery time beside the client's figure."""
    figures = service_figures(report)
    if not figures or not figures["deliveries"]:
        return ""
    mean = figures["seconds"] / figures["deliveries"] * 1000
    return (
        f" By the service's own count (chat_delivery_seconds, /metrics) its "
        f"writes came {mean:.1f} ms after publication on average, every one "
        f"{bucket_bound(figures, 1.0)}; what the client measured beyond that is "
        "the sender's way in, nginx, and the one client process reading every "
        "socket."
    )


def write_report(results: dict, folder: Path) -> Path:
    """BENCHMARKS.md and latency.png (when echo was measured) in `folder`;
    the page's path."""
    if any(section.get("echo") for section in results["variants"].values()):
        write_chart(results, folder / "latency.png")
    page = folder / "BENCHMARKS.md"
    write_markdown(results, page, "latency.png")
    return page


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "results", type=Path, help="a results.json of benchmarks/run.py"
    )
    parser.add_argument(
        "--output-dir", type=Path, help="default: the folder of the results file"
    )
    arguments = parser.parse_args()
    results = json.loads(arguments.results.read_text())
    folder = arguments.output_dir or arguments.results.parent
    folder.mkdir(parents=True, exist_ok=True)
    print(f"wrote {write_report(results, folder)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
