"""Where the gateway spends its time: py-spy samples taken while the benchmark drives it.

``python -m bench.run --profile`` runs one more downstream transfer, upstream transfer and
round-trip series through the gateway, each while ``py-spy record --native`` samples the
gateway process (not counted in the figures: sampling pauses the process). The raw stacks are
kept under ``bench/results/``; the report lists the functions with the most samples, by self
time (the innermost frame) and inclusive time (anywhere on the stack).
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.clients import download, round_trips, upload
from bench.connections import Target
from bench.processes import wait_until

if TYPE_CHECKING:
    from bench.run import Settings

__all__ = ["RATE", "StackSummary", "profile_gateway", "py_spy_command", "render", "summarize_raw"]

#: Samples per second.
RATE = 250
#: Rows in each list of the report.
TOP = 12

StackSummary = dict[str, Any]


def py_spy_command() -> str | None:
    """The py-spy executable (beside this Python, else on PATH), or None."""
    beside = Path(sys.executable).parent / "py-spy"
    if beside.exists():
        return str(beside)
    return shutil.which("py-spy")


def summarize_raw(path: Path, thread: str = "MainThread") -> StackSummary:
    """Sample counts per frame of one thread from py-spy's ``--format raw --threads`` output.

    The gateway relays on its main thread (the event loop); its other threads run scripts'
    ``start()`` and ``stop()`` and wait otherwise (native sampling counts a waiting thread as
    busy, so they are left out).

    Returns:
        ``samples``: the thread's samples; ``self``: the innermost frames with the most;
        ``python``: the same with native frames charged to the Python function that called
        them (what code a ``memcpy`` or a ``write`` was done for); ``inclusive``: frames
        anywhere on the stack.
    """
    own: Counter[str] = Counter()
    python: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        first, _, rest = stack.partition(";")
        if not first.startswith("thread (") or not first.endswith(f": {thread}") or not rest:
            continue
        count = int(count_text)
        frames = [_tidy(frame) for frame in rest.split(";")]
        total += count
        own[frames[-1]] += count
        python[next((f for f in reversed(frames) if _is_python(f)), frames[-1])] += count
        for frame in set(frames):
            inclusive[frame] += count
    return {
        "samples": total,
        "self": [[frame, count] for frame, count in own.most_common(TOP)],
        "python": [[frame, count] for frame, count in python.most_common(TOP)],
        # Frames on (nearly) every stack are the event loop's own: they say nothing.
        "inclusive": [
            [frame, count] for frame, count in inclusive.most_common() if count < 0.97 * total
        ][:TOP],
    }


def _is_python(frame: str) -> bool:
    return frame.endswith(".py)")


def _tidy(frame: str) -> str:
    # Native frames without symbols read "0x7f... (libc.so.6)": the library is what tells.
    if frame.startswith("0x") and " (" in frame:
        return "[native] " + frame.split(" (", 1)[1].rstrip(")")
    return frame


async def profile_gateway(
    pid: int, target: Target, settings: Settings, out_dir: Path
) -> dict[str, StackSummary]:
    """Sample the gateway ``pid`` during a transfer each way and a round-trip series."""
    command = py_spy_command()
    if command is None:
        return {"error": {"message": "py-spy is not installed (pip install py-spy)"}}
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    phases: list[tuple[str, Callable[[], Awaitable[object]]]] = [
        ("down", lambda: download(target, settings.down_bytes)),
        ("up", lambda: upload(target, settings.up_bytes)),
        ("round trips", lambda: round_trips(target, settings.round_trips)),
    ]
    results: dict[str, StackSummary] = {}
    for name, phase in phases:
        raw = out_dir / f"py-spy-{name.replace(' ', '-')}-{stamp}.txt"
        log = out_dir / f"py-spy-{name.replace(' ', '-')}-{stamp}.log"
        with log.open("wb") as errors:
            spy = subprocess.Popen(
                [
                    command,
                    "record",
                    "--pid",
                    str(pid),
                    "--rate",
                    str(RATE),
                    "--format",
                    "raw",
                    "--output",
                    str(raw),
                    "--nolineno",
                    "--native",
                    "--threads",
                ],
                # It says "Sampling process" on stdout or stderr, depending on what they are.
                stdout=errors,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_until(partial(_sampling, log, spy), 30, message="py-spy did not start sampling")
            began = time.monotonic()
            await phase()
            seconds = time.monotonic() - began
        finally:
            if spy.poll() is None:
                spy.send_signal(signal.SIGINT)
            try:
                await asyncio.to_thread(spy.wait, 30)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()
        if not raw.exists():
            results[name] = {"error": log.read_text(errors="replace")[-500:]}
            continue
        summary = summarize_raw(raw)
        summary["seconds"] = seconds
        summary["busy"] = summary["samples"] / (seconds * RATE) if seconds else None
        summary["raw"] = str(raw)
        results[name] = summary
    return results


def _sampling(log: Path, spy: subprocess.Popen[bytes]) -> bool:
    return "Sampling process" in log.read_text(errors="replace") or spy.poll() is not None


def render(profiles: dict[str, StackSummary]) -> str:
    """The profiles as Markdown."""
    lines = [
        "py-spy samples of the gateway's main thread (--native; % of its samples; "
        "'by Python caller' charges native frames to the Python function that called them):",
        "",
    ]
    for name, summary in profiles.items():
        if "error" in summary:
            lines.append(f"{name}: {summary['error']}")
            continue
        samples = summary["samples"] or 1
        busy = summary.get("busy")
        # Blocking (--native) sampling pauses the process, so this is a rough figure.
        busy_text = f", busy ~{busy * 100:.0f} % of the time" if busy else ""
        lines.append(
            f"**{name}** ({summary['samples']} samples over {summary['seconds']:.1f} s"
            f"{busy_text}; raw stacks: `{summary['raw']}`)"
        )
        lines.append("")
        lines.append("| self | function | | by Python caller | function | | inclusive | function |")
        lines.append("| ---: | --- | --- | ---: | --- | --- | ---: | --- |")
        columns = [summary["self"], summary["python"], summary["inclusive"]]
        for row in range(max(len(column) for column in columns)):
            cells = [
                _cell(column[row] if row < len(column) else None, samples) for column in columns
            ]
            lines.append(f"| {' | | '.join(cells)} |")
        lines.append("")
    return "\n".join(lines)


def _cell(row: list[Any] | None, samples: int) -> str:
    if row is None:
        return " | "
    return f"{row[1] / samples * 100:.1f} % | `{row[0]}`"
