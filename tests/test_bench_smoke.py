"""The benchmark in its smallest mode, so that it never rots: bytes must arrive right, not fast.

``python -m bench.run --smoke`` starts a backend, a real ``vizgate serve``, (when it is
installed) websockify and the reference TCP relays (``bench/relay.py``, and ``bench/relay.c``
when a C compiler is installed), moves a few MiB each way through every target, does round
trips (through the relays too), a small concurrent load and a few session starts, and writes its
report as JSON. The test checks that report: every byte arrived and was checked, every echo
matched, every session started.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import shutil
import signal
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from support import scaled

REPO = Path(__file__).resolve().parent.parent


def _bench_protocol() -> types.ModuleType:
    # bench/ is not an installed package; its protocol module imports nothing of the project.
    name = "vizgate_bench_protocol"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / "protocol.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the class is made.
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _websockify_installed() -> bool:
    return (Path(sys.executable).parent / "websockify").exists() or bool(shutil.which("websockify"))


def _c_compiler() -> str | None:
    # What the harness compiles bench/relay.c with.
    return shutil.which("cc") or shutil.which("gcc")


def test_pattern_checker_finds_the_first_wrong_byte() -> None:
    protocol = _bench_protocol()
    stream = bytearray(protocol.PATTERN * 3)[:150_000]
    checker = protocol.PatternChecker()
    checker.feed(stream[:70_000])
    checker.feed(stream[70_000:])
    assert checker.ok
    assert checker.offset == 150_000

    stream[123_456] ^= 0x01
    checker = protocol.PatternChecker()
    for start in range(0, len(stream), 4096):
        checker.feed(memoryview(stream)[start : start + 4096])
    assert checker.first_bad == 123_456
    assert not checker.ok


def test_sink_verdicts_round_trip() -> None:
    protocol = _bench_protocol()
    good = protocol.parse_sink_verdict(protocol.sink_verdict(1000, None))
    assert good.ok
    assert good.received == 1000
    bad = protocol.parse_sink_verdict(protocol.sink_verdict(1000, 17))
    assert not bad.ok
    assert bad.first_bad == 17
    with pytest.raises(ValueError, match="not a sink verdict"):
        protocol.parse_sink_verdict(protocol.READY)


@pytest.fixture(scope="module")
def smoke_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    pytest.importorskip("picows", reason="the benchmark's load client is picows")
    path = tmp_path_factory.mktemp("bench") / "report.json"
    completed = subprocess.run(
        [sys.executable, "-m", "bench.run", "--smoke", "--json", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=scaled(120),
        check=False,
    )
    output = f"stdout:\n{completed.stdout[-6000:]}\nstderr:\n{completed.stderr[-6000:]}"
    assert completed.returncode == 0, output
    assert path.exists(), output
    report: dict[str, Any] = json.loads(path.read_text())
    assert report["failures"] == [], output
    return report


def _targets() -> list[str]:
    names = ["raw-tcp", "client-ceiling", "vizgate"]
    if _websockify_installed():
        names.append("websockify")
    return names


@pytest.mark.parametrize("target", _targets())
def test_every_byte_arrives_unchanged_each_way(smoke_report: dict[str, Any], target: str) -> None:
    settings = smoke_report["settings"]
    transfers = smoke_report["transfers"][target]
    expected = {"down": settings["down_bytes"], "up": settings["up_bytes"]}
    assert {t["direction"] for t in transfers} == {"down", "up"}
    for transfer in transfers:
        assert transfer["ok"], transfer
        assert transfer["error"] == ""
        assert transfer["moved"] == transfer["expected"] == expected[transfer["direction"]]
        assert transfer["seconds"] > 0


@pytest.mark.parametrize("target", _targets())
def test_round_trips_echo_what_was_sent(smoke_report: dict[str, Any], target: str) -> None:
    for series in smoke_report["round_trips"][target]:
        assert series["ok"], series
        assert series["count"] == smoke_report["settings"]["round_trips"]
        assert 0 < series["p50_ms"] <= series["p99_ms"]


@pytest.mark.parametrize("relay", ["ws-relay", "python-relay", "c-relay"])
def test_reference_relays_carry_downstream_and_round_trips(
    smoke_report: dict[str, Any], relay: str
) -> None:
    if relay == "c-relay" and _c_compiler() is None:
        pytest.skip("no C compiler: the harness leaves the C relay out")
    settings = smoke_report["settings"]
    series = smoke_report["round_trips"].get(relay, [])
    assert [s["repeat"] for s in series] == list(range(settings["repeats"]))
    for entry in series:
        assert entry["ok"], entry
        assert entry["count"] == settings["round_trips"]
        assert 0 < entry["p50_ms"] <= entry["p99_ms"]
    # Downstream only: every byte arrived and was checked; no upstream transfers.
    transfers = smoke_report["transfers"][relay]
    assert [t["direction"] for t in transfers] == ["down"] * settings["repeats"]
    for transfer in transfers:
        assert transfer["ok"], transfer
        assert transfer["moved"] == transfer["expected"] == settings["down_bytes"]
    ratios = smoke_report["summary"]["paired_ratios"][f"rtt_p50_ms_vs_{relay}"]
    assert len(ratios) == settings["repeats"]
    assert all(ratio > 0 for ratio in ratios)
    spread = smoke_report["summary"]["vizgate_rtt_p50_vs_relays"][relay]
    assert spread["lowest"] <= spread["median"] <= spread["highest"]
    share = smoke_report["summary"]["relays_down_of_raw_tcp"][relay]
    assert 0 < share["lowest"] <= share["median"] <= share["highest"]


def test_the_gateway_carries_concurrent_tunnels(smoke_report: dict[str, Any]) -> None:
    settings = smoke_report["settings"]
    (load,) = smoke_report["loads"]["vizgate"]
    assert load["tunnels"] == settings["concurrency"][0]
    assert load["opened"] == load["tunnels"]
    assert load["error_count"] == 0, load["errors"]
    # Each tunnel sends at its rate for the whole window; a stalled tunnel sends less.
    assert load["round_trips"] >= 0.8 * load["expected_round_trips"] > 0
    assert load["proxy_rss_open_kib"] >= load["proxy_rss_before_kib"] > 0


def test_start_latency_subtracts_each_sessions_own_start(smoke_report: dict[str, Any]) -> None:
    entry = smoke_report["start_latency"]["vizgate"]
    sessions = smoke_report["settings"]["start_sessions"]
    assert entry["errors"] == []
    assert len(entry["connect_to_first_byte_ms"]) == sessions
    assert entry["unmatched_sessions"] == 0
    for total, own, added in zip(
        entry["connect_to_first_byte_ms"],
        entry["script_start_ms"],
        entry["gateway_added_ms"],
        strict=True,
    ):
        assert 0 <= own < total
        assert added == pytest.approx(total - own)


def _children(pid: int) -> set[int]:
    children: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            children.update(int(c) for c in (task / "children").read_text().split())
    return children


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except FileNotFoundError:
        return ""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_a_terminated_run_stops_every_process_it_started(tmp_path: Path) -> None:
    pytest.importorskip("picows", reason="the benchmark's load client is picows")
    report = tmp_path / "report.json"
    harness = subprocess.Popen(
        [sys.executable, "-m", "bench.run", "--smoke", "--no-websockify", "--json", str(report)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert harness.stderr is not None
        # The first repetition runs once the backend and the gateway are up.
        for line in harness.stderr:
            if line.startswith("repetition 1/"):
                break
        else:
            pytest.fail(f"the harness ended first, status {harness.wait()}")
        started = _children(harness.pid)
        commands = [_command(pid) for pid in started]
        assert any("bench.backends" in command for command in commands), commands
        assert any("vizgate serve" in command for command in commands), commands
        assert any("bench.relay" in command for command in commands), commands
        if _c_compiler() is not None:
            assert any("/c-relay/relay " in command for command in commands), commands
        harness.send_signal(signal.SIGTERM)
        status = harness.wait(timeout=scaled(60))
        assert status == 130, harness.stderr.read()[-4000:]
        assert [pid for pid in started if _alive(pid)] == []
        assert not report.exists(), "no report from an interrupted run"
    finally:
        if harness.poll() is None:
            harness.kill()
            harness.wait()
