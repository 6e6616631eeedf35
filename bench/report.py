"""What one benchmark run measured, summarized and rendered.

A :class:`Report` holds every sample as JSON-ready dicts (``*_json`` helpers turn the client's
results into them) and where the run took place (:func:`machine_info`). :func:`summarize`
takes medians over the repetitions per target, the *paired* ratios (vizgate's figure over a
baseline's, one ratio per repetition, both measured seconds apart) and the targets' verdicts;
:func:`render` prints it all as Markdown tables. The reference relays (``ws-relay``,
``python-relay``, ``c-relay``) are measured downstream and in the round trips: they are rows of
the first table, and two lines under it give what share of raw TCP each reached downstream and
vizgate's paired round-trip ratio to each.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import math
import os
import platform
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import profiling
from bench.clients import FirstByte, Load, RoundTrips, Transfer, percentile

if TYPE_CHECKING:
    from bench.run import Settings

__all__ = [
    "MIB",
    "PAIRED_FIGURES",
    "REFERENCE_RELAYS",
    "TARGET_ORDER",
    "Report",
    "jsonable",
    "load_json",
    "machine_info",
    "render",
    "start_latency_json",
    "summarize",
    "transfer_json",
    "trips_json",
]

MIB = 1024 * 1024

#: The order of targets in tables.
TARGET_ORDER = (
    "raw-tcp",
    "client-ceiling",
    "c-relay",
    "python-relay",
    "ws-relay",
    "websockify",
    "vizgate",
)

#: The relays measured downstream and in the round trips: what any relay reaches here.
REFERENCE_RELAYS = ("ws-relay", "python-relay", "c-relay")


@dataclass
class Report:
    """Everything one run measured, and where it ran."""

    settings: dict[str, Any]
    machine: dict[str, Any]
    started: str
    transfers: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    round_trips: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    loads: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    start_latency: dict[str, dict[str, Any]] = field(default_factory=dict)
    profiles: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    #: What the reader should know that is not a failure (a reference left out, and why).
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0


def transfer_json(target: str, repeat: int, transfer: Transfer) -> dict[str, Any]:
    return {
        "target": target,
        "repeat": repeat,
        **asdict(transfer),
        "mb_per_s": transfer.mb_per_s,
        "proxy_cpu_s_per_gb": transfer.proxy_cpu_per_gb,
        "client_cpu_s_per_gb": transfer.client_cpu_per_gb,
    }


def trips_json(target: str, repeat: int, trips: RoundTrips) -> dict[str, Any]:
    return {
        "target": target,
        "repeat": repeat,
        "size": trips.size,
        "count": len(trips.latencies),
        "ok": trips.ok,
        "error": trips.error,
        "p50_ms": trips.percentile_ms(50),
        "p99_ms": trips.percentile_ms(99),
        "proxy_cpu_seconds": trips.proxy_cpu_seconds,
    }


def load_json(target: str, load: Load, settings: Settings) -> dict[str, Any]:
    return {
        "target": target,
        "tunnels": load.tunnels,
        "opened": load.opened,
        "open_seconds": load.open_seconds,
        "seconds": settings.concurrency_seconds,
        "echo_rate": settings.echo_rate,
        "echo_size": settings.echo_size,
        "round_trips": len(load.latencies),
        "expected_round_trips": int(
            load.tunnels * settings.concurrency_seconds * settings.echo_rate
        ),
        "errors": dict(load.errors),
        "error_count": load.error_count,
        "p50_ms": percentile(load.latencies, 50) * 1e3,
        "p99_ms": percentile(load.latencies, 99) * 1e3,
        "proxy_rss_before_kib": load.proxy_rss_before_kib,
        "proxy_rss_open_kib": load.proxy_rss_open_kib,
        "proxy_peak_kib": load.proxy_peak_kib,
        "rss_per_tunnel_kib": load.rss_per_tunnel_kib,
    }


def start_latency_json(result: FirstByte, start_times: dict[str, float] | None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "sessions": len(result.latencies) + len(result.errors),
        "errors": result.errors,
        "connect_to_first_byte_ms": [value * 1e3 for value in result.latencies],
        "p50_ms": percentile(result.latencies, 50) * 1e3,
        "p99_ms": percentile(result.latencies, 99) * 1e3,
    }
    if start_times is not None:
        script = [start_times.get(session, math.nan) for session in result.session_ids]
        added = [total - own for total, own in zip(result.latencies, script, strict=True)]
        entry["script_start_ms"] = [value * 1e3 for value in script]
        entry["gateway_added_ms"] = [value * 1e3 for value in added]
        entry["gateway_added_p50_ms"] = percentile(added, 50) * 1e3
        entry["gateway_added_p99_ms"] = percentile(added, 99) * 1e3
        entry["unmatched_sessions"] = sum(math.isnan(value) for value in script)
    return entry


def machine_info() -> dict[str, Any]:
    """What the figures were measured on."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory_gib = 0.0
    with contextlib.suppress(OSError, ValueError, IndexError):
        total = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
        memory_gib = int(total) / MIB
    versions = {}
    for package in (
        "vizgate",
        "uvicorn",
        "websockets",
        "uvloop",
        "httptools",
        "django",
        "picows",
        "websockify",
        "numpy",
    ):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "memory_gib": round(memory_gib, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": versions,
    }


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(present) if present else None


def summarize(report: Report) -> dict[str, Any]:
    """Medians over the repetitions, per target, and the targets' verdicts."""
    per_target: dict[str, dict[str, Any]] = {}
    # The reference relays have no upstream transfers.
    names = [*report.transfers, *(n for n in report.round_trips if n not in report.transfers)]
    for name in names:
        entries = report.transfers.get(name, [])
        down = [e for e in entries if e["direction"] == "down" and e["ok"]]
        up = [e for e in entries if e["direction"] == "up" and e["ok"]]
        trips = [e for e in report.round_trips.get(name, []) if e["ok"]]
        per_target[name] = {
            "down_mb_per_s": _median([e["mb_per_s"] for e in down]),
            "up_mb_per_s": _median([e["mb_per_s"] for e in up]),
            "down_cpu_s_per_gb": _median([e["proxy_cpu_s_per_gb"] for e in down]),
            "up_cpu_s_per_gb": _median([e["proxy_cpu_s_per_gb"] for e in up]),
            "client_down_cpu_s_per_gb": _median([e["client_cpu_s_per_gb"] for e in down]),
            "client_up_cpu_s_per_gb": _median([e["client_cpu_s_per_gb"] for e in up]),
            "rtt_p50_ms": _median([e["p50_ms"] for e in trips]),
            "rtt_p99_ms": _median([e["p99_ms"] for e in trips]),
        }
    paired = {
        f"{key}_vs_{baseline}": _paired(report, key, baseline)
        for key in PAIRED_FIGURES
        for baseline in ("websockify", "raw-tcp")
    }
    for relay in REFERENCE_RELAYS:
        paired[f"rtt_p50_ms_vs_{relay}"] = _paired(report, "rtt_p50_ms", relay)
    # What share of raw TCP a relay reaches downstream, vizgate's tunnel and the references.
    down_of_raw = {
        relay: _paired(report, "down_mb_per_s", "raw-tcp", subject=relay)
        for relay in ("vizgate", *REFERENCE_RELAYS)
    }
    summary: dict[str, Any] = {
        "targets": per_target,
        "paired_ratios": paired,
        "vizgate_rtt_p50_vs_relays": {
            relay: _spread(paired[f"rtt_p50_ms_vs_{relay}"])
            for relay in REFERENCE_RELAYS
            if paired[f"rtt_p50_ms_vs_{relay}"]
        },
        "relays_down_of_raw_tcp": {
            relay: _spread(ratios) for relay, ratios in down_of_raw.items() if ratios
        },
        "checks": _checks(report, paired),
    }
    return summary


def _spread(ratios: list[float]) -> dict[str, Any]:
    return {
        "median": _median(ratios),
        "lowest": min(ratios),
        "highest": max(ratios),
        "repetitions": len(ratios),
    }


#: The figures compared repetition by repetition: (table key, where it comes from, its field).
PAIRED_FIGURES: dict[str, tuple[str, str]] = {
    "down_mb_per_s": ("down", "mb_per_s"),
    "up_mb_per_s": ("up", "mb_per_s"),
    "down_cpu_s_per_gb": ("down", "proxy_cpu_s_per_gb"),
    "rtt_p50_ms": ("trips", "p50_ms"),
}


def _paired(report: Report, key: str, baseline: str, subject: str = "vizgate") -> list[float]:
    """``subject``'s figure over ``baseline``'s, one ratio per repetition that measured both.

    The two are measured seconds apart within a repetition, so a slow spell of a shared machine
    weighs on both sides of a ratio; the median of these ratios is what the targets are held to.
    """
    source, field_name = PAIRED_FIGURES[key]

    def by_repeat(target: str) -> dict[int, float]:
        if source == "trips":
            entries = report.round_trips.get(target, [])
        else:
            entries = [e for e in report.transfers.get(target, []) if e["direction"] == source]
        return {
            e["repeat"]: e[field_name] for e in entries if e["ok"] and e.get(field_name) is not None
        }

    ours, theirs = by_repeat(subject), by_repeat(baseline)
    return [ours[repeat] / theirs[repeat] for repeat in sorted(ours) if theirs.get(repeat)]


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def _checks(report: Report, paired: dict[str, list[float]]) -> list[dict[str, Any]]:
    checks: list[dict[str, Any]] = []

    def check(
        goal: str, value: float | None, limit: float, higher_is_better: bool, shown: str
    ) -> None:
        met = None if value is None else (value >= limit if higher_is_better else value <= limit)
        checks.append({"goal": goal, "value": value, "limit": limit, "met": met, "shown": shown})

    def ratio_check(
        goal: str, key: str, limit: float, higher_is_better: bool, *, percent: bool = False
    ) -> None:
        ratios = paired.get(key, [])
        value = _median(ratios)
        show = _pct if percent else _times
        shown = show(value)
        if len(ratios) > 1:
            shown += f" ({show(min(ratios))} to {show(max(ratios))})"
        check(goal, value, limit, higher_is_better, shown)

    ratio_check(
        "downstream >= 60 % of raw TCP", "down_mb_per_s_vs_raw-tcp", 0.60, True, percent=True
    )
    ratio_check("downstream >= 1.5x websockify", "down_mb_per_s_vs_websockify", 1.5, True)
    ratio_check(
        "CPU per GB downstream <= 0.5x websockify's", "down_cpu_s_per_gb_vs_websockify", 0.5, False
    )
    ratio_check("upstream >= 4x websockify", "up_mb_per_s_vs_websockify", 4.0, True)
    ratio_check("round trip p50 <= 0.8x websockify's", "rtt_p50_ms_vs_websockify", 0.8, False)
    loads = report.loads.get("vizgate", [])
    if loads:
        biggest = max(loads, key=lambda e: e["tunnels"])
        errors = biggest["error_count"] + (biggest["tunnels"] - biggest["opened"])
        check(f"{biggest['tunnels']} concurrent tunnels: 0 errors", errors, 0, False, f"{errors}")
        per = biggest["rss_per_tunnel_kib"]
        check(
            f"{biggest['tunnels']} concurrent tunnels: < 64 KiB RSS per tunnel",
            per,
            64,
            False,
            _num(per, " KiB"),
        )
    added = report.start_latency.get("vizgate", {}).get("gateway_added_p50_ms")
    check("gateway-added start latency p50 <= 20 ms", added, 20.0, False, _num(added, " ms", 1))
    return checks


def _num(value: float | None, unit: str = "", digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}{unit}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f} %"


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def render(report: Report) -> str:
    """The report as Markdown tables."""
    lines: list[str] = []
    machine = report.machine
    lines.append(
        f"Run {report.started}, {report.seconds:.0f} s; {machine['cpus']} CPUs ({machine['cpu']}), "
        f"{machine['memory_gib']} GiB, Linux {machine['kernel']}, Python {machine['python']}."
    )
    packages = ", ".join(f"{k} {v}" for k, v in machine["packages"].items())
    lines.append(f"Packages: {packages}.")
    s = report.settings
    lines.append(
        f"Medians of {s['repeats']} interleaved repetitions; {s['down_bytes'] / MIB:g} MiB down, "
        f"{s['up_bytes'] / MIB:g} MiB up per transfer, {s['round_trips']} round trips of "
        "100 bytes. "
        "MB = 10^6 bytes; CPU is the proxy process's (for websockify, with its per-connection "
        "children) over the transfer."
    )
    lines.append("")
    targets = report.summary.get("targets", {})
    ws = targets.get("websockify", {})
    raw = targets.get("raw-tcp", {})
    lines.append(
        "| path | down MB/s | up MB/s | round trip p50 | p99 | proxy CPU s/GB down | up "
        "| client CPU s/GB down |"
    )
    lines.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    labels = {
        "raw-tcp": "raw loopback TCP (the limit)",
        "client-ceiling": "load client straight to a WebSocket backend (its ceiling)",
        "c-relay": "reference: C epoll relay, plain TCP (no WebSocket)",
        "python-relay": "reference: Python uvloop relay, plain TCP (no WebSocket)",
        "ws-relay": "reference: Python uvloop WebSocket relay, vizgate's frame code only",
        "websockify": "websockify",
        "vizgate": "vizgate tunnel (`vizgate serve`)",
    }
    for name in TARGET_ORDER:
        if name not in targets:
            continue
        t = targets[name]
        lines.append(
            f"| {labels[name]} | {_num(t['down_mb_per_s'])} | {_num(t['up_mb_per_s'])} "
            f"| {_num(t['rtt_p50_ms'], ' ms', 3)} | {_num(t['rtt_p99_ms'], ' ms', 3)} "
            f"| {_num(t['down_cpu_s_per_gb'], '', 2)} | {_num(t['up_cpu_s_per_gb'], '', 2)} "
            f"| {_num(t['client_down_cpu_s_per_gb'], '', 2)} |"
        )
    viz = targets.get("vizgate")
    if viz:
        for other, label in ((ws, "websockify"), (raw, "raw TCP")):
            if not other:
                continue
            cells = [
                _times(_ratio(viz[key], other.get(key)))
                for key in (
                    "down_mb_per_s",
                    "up_mb_per_s",
                    "rtt_p50_ms",
                    "rtt_p99_ms",
                    "down_cpu_s_per_gb",
                    "up_cpu_s_per_gb",
                )
            ]
            lines.append(f"| vizgate / {label} | {' | '.join(cells)} | |")
    down_of_raw = report.summary.get("relays_down_of_raw_tcp", {})
    if len(down_of_raw) > 1:
        relays = {
            "vizgate": "vizgate",
            "ws-relay": "the WebSocket relay",
            "python-relay": "the Python TCP relay",
            "c-relay": "the C TCP relay",
        }
        shown = ", ".join(
            f"{relays.get(name, name)} {_pct(v['median'])} ({_pct(v['lowest'])} to "
            f"{_pct(v['highest'])})"
            for name, v in down_of_raw.items()
        )
        lines.append("")
        lines.append(
            f"Downstream, share of raw TCP in the same repetitions: {shown} (medians of the "
            "repetitions' own ratios)."
        )
    versus = report.summary.get("vizgate_rtt_p50_vs_relays", {})
    if versus:
        relays = {
            "ws-relay": "the WebSocket relay's",
            "python-relay": "the Python TCP relay's",
            "c-relay": "the C TCP relay's",
        }
        shown = ", ".join(
            f"{_times(v['median'])}{_range(v)} {relays.get(name, name)}"
            for name, v in versus.items()
        )
        lines.append("")
        lines.append(
            f"vizgate's round trip p50 is {shown} (medians of the repetitions' own ratios)."
        )
    for note in report.notes:
        lines.append("")
        lines.append(note)
    lines.append("")
    if report.loads:
        s_load = report.settings
        lines.append(
            f"Concurrent tunnels, each echoing {s_load['echo_size']} bytes {s_load['echo_rate']:g} "
            f"times a second for {s_load['concurrency_seconds']:g} s (vizgate: a fresh gateway per "
            "row; websockify's memory is the PSS of its process tree):"
        )
        lines.append("")
        lines.append(
            "| path | tunnels | errors | open all | round trips | p50 | p99 | proxy RSS before "
            "| with tunnels | peak | RSS per tunnel | threads after |"
        )
        lines.append("| --- |" + " ---: |" * 11)
        for name in TARGET_ORDER:
            for entry in report.loads.get(name, []):
                errors = entry["error_count"] + entry["tunnels"] - entry["opened"]
                lines.append(
                    f"| {name} | {entry['tunnels']:,} | {errors} | {entry['open_seconds']:.2f} s "
                    f"| {entry['round_trips']:,} | {_num(entry['p50_ms'], ' ms', 2)} "
                    f"| {_num(entry['p99_ms'], ' ms', 2)} "
                    f"| {_kib(entry['proxy_rss_before_kib'])} "
                    f"| {_kib(entry['proxy_rss_open_kib'])} "
                    f"| {_kib(entry['proxy_peak_kib'])} "
                    f"| {_num(entry['rss_per_tunnel_kib'], ' KiB', 1)} "
                    f"| {_num(entry.get('proxy_threads_after'))} |"
                )
        lines.append("")
    if report.start_latency:
        lines.append(
            f"Start latency: WebSocket (or TCP) connect to the first RFB byte, "
            f"{report.settings['start_sessions']} sessions each; for vizgate each is a new "
            "session whose script's start() returns at once:"
        )
        lines.append("")
        lines.append("| path | p50 | p99 | gateway-added p50 | gateway-added p99 | errors |")
        lines.append("| --- | ---: | ---: | ---: | ---: | ---: |")
        for name in TARGET_ORDER:
            if name not in report.start_latency:
                continue
            entry = report.start_latency[name]
            lines.append(
                f"| {name} | {_num(entry['p50_ms'], ' ms', 2)} | {_num(entry['p99_ms'], ' ms', 2)} "
                f"| {_num(entry.get('gateway_added_p50_ms'), ' ms', 2)} "
                f"| {_num(entry.get('gateway_added_p99_ms'), ' ms', 2)} | {len(entry['errors'])} |"
            )
        lines.append("")
    checks = report.summary.get("checks", [])
    if checks:
        lines.append(
            "Targets: a ratio is the median of the repetitions' own ratios (each repetition "
            "measures both sides seconds apart), with the lowest and highest in brackets."
        )
        lines.append("")
        lines.append("| target | measured | met |")
        lines.append("| --- | ---: | :---: |")
        for item in checks:
            met = {True: "yes", False: "**no**", None: "-"}[item["met"]]
            lines.append(f"| {item['goal']} | {item['shown']} | {met} |")
        lines.append("")
    if report.profiles:
        lines.append(profiling.render(report.profiles))
    if report.failures:
        lines.append("Failures:")
        lines.extend(f"- {failure}" for failure in report.failures)
    return "\n".join(lines)


def _range(spread: dict[str, Any]) -> str:
    if spread["repetitions"] < 2:
        return ""
    return f" ({_times(spread['lowest'])} to {_times(spread['highest'])})"


def _kib(value: int | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1024:,.1f} MiB"


def jsonable(value: Any) -> Any:
    """``value`` with NaN (a percentile of nothing) as None: JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    return value
