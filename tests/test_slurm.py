"""Tests of vizgate.launchers.slurm (and the Slurm commands under it,
:mod:`vizgate.launchers.slurm_commands`): sessions that are Slurm jobs running Xvnc.

The integration tests run a real single-node Slurm (``tests/slurm_cluster.py``) started once for
the whole test run (the ``slurm_cluster`` fixture of ``conftest.py``), and drive the launcher
through the broker as a catalog names it (``"script": "builtin:slurm"``), or through an instance
directly where the broker has no say (re-adopting a job after a restart). They need root,
Slurm, MUNGE and TigerVNC: missing programs skip them, or fail them when ``CI`` is set.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

import vizgate.launchers.slurm as slurm_launcher
from slurm_cluster import (
    DOWN_PARTITION,
    SHORT_PARTITION,
    SlurmCluster,
    processes_mentioning,
)
from slurm_sessions import (
    JOB_NAME_0,
    SIZE,
    TYPE,
    handshake_through_bridge,
    jobs_named,
    write_catalog,
)
from support import (
    await_until,
    listening_addresses,
    port_accepts,
    scaled,
    vnc_authenticate,
    wait_until,
)
from vizgate.broker import Broker
from vizgate.catalog import load_catalog
from vizgate.exceptions import ReservationError, ScriptError, StartError
from vizgate.launchers.slurm import JOB_SCRIPT, SlurmSession, job_script_said, realize_service
from vizgate.launchers.slurm_commands import JobStatus, job_environment, job_status
from vizgate.vnc_password import read_vnc_password_file, write_vnc_password_file

# ---------------------------------------------------------------------------------------
# Fixtures


# ---------------------------------------------------------------------------------------
# Unit tests: no cluster needed


def test_only_the_job_scripts_own_last_words_reach_the_user() -> None:
    said = "2026-11-29 06:36:23 vizgate-slurm-job: Xvnc program not found: /opt/tigervnc/Xvnc"
    assert job_script_said(said) == "Xvnc program not found: /opt/tigervnc/Xvnc"
    # Whatever else ends the log (Xvnc's own output, a module system's) is for the admin.
    assert job_script_said("Fatal server error: Couldn't add screen") == ""
    assert job_script_said("vizgate-slurm-job: no time stamp") == ""
    assert job_script_said("") == ""


def test_job_script_is_valid_bash_and_shipped_beside_the_launcher() -> None:
    assert Path(slurm_launcher.__file__).resolve().parent / "slurm_job.sh" == JOB_SCRIPT
    assert JOB_SCRIPT.is_file()
    result = subprocess.run(["bash", "-n", str(JOB_SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_sbatch_command_is_an_argv_list_with_the_admins_arguments_in_place(
    tmp_path: Path,
) -> None:
    session = realize_service(
        name="GPU desk/top",
        count=3,
        index=2,
        common_options={
            "partition": "viz",
            "time_limit": "8:00:00",
            "sbatch_args": ["--gres=gpu:1", "--constraint=a b"],
            "xvnc": "/opt/tigervnc/bin/Xvnc",
        },
    )
    folder = tmp_path / "session"
    assert session.sbatch_command(folder, "1600x1200") == [
        "sbatch",
        "--parsable",
        "--job-name",
        "vizgate-GPU_desk_top-2",
        "--export=ALL",
        "--partition",
        "viz",
        "--time",
        "8:00:00",
        "--gres=gpu:1",
        "--constraint=a b",
        "--output",
        str(folder / "job.log"),
        "--chdir",
        str(folder),
        str(JOB_SCRIPT),
        str(folder),
        "1600x1200",
        "/opt/tigervnc/bin/Xvnc",
        "24",
        "GPU desk/top",
    ]


def test_jobs_inherit_only_a_few_variables_of_the_gateways_environment() -> None:
    environ = {
        "PATH": "/usr/bin",
        "HOME": "/home/gw",
        "LANG": "C.UTF-8",
        "SLURM_CONF": "/etc/slurm/other.conf",
        "SBATCH_ACCOUNT": "viz",
        "DATABASE_URL": "postgres://gw:secret@db/vizgate",
        "DJANGO_SECRET_KEY": "secret",
        "MY_SLURM_THING": "x",
    }
    assert job_environment(environ) == {
        "PATH": "/usr/bin",
        "HOME": "/home/gw",
        "LANG": "C.UTF-8",
        "SLURM_CONF": "/etc/slurm/other.conf",
        "SBATCH_ACCOUNT": "viz",
    }


def test_sbatch_command_leaves_out_what_is_not_configured(tmp_path: Path) -> None:
    argv = SlurmSession("T").sbatch_command(tmp_path, "800x600")
    assert "--partition" not in argv
    assert "--time" not in argv
    assert argv[-4:] == ["800x600", "Xvnc", "24", "T"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param(
            {"sbatch_args": "--gres=gpu:1 --exclusive"},
            "option 'sbatch_args' must be a list of strings, one per argument",
            id="sbatch_args-string",
        ),
        pytest.param(
            {"sbatch_args": ["--exclusive", 3]},
            "option 'sbatch_args' must be a list of non-empty strings, not ['--exclusive', 3]",
            id="sbatch_args-number",
        ),
        pytest.param(
            {"sbatch_args": [""]},
            "option 'sbatch_args' must be a list of non-empty strings",
            id="sbatch_args-empty-string",
        ),
        pytest.param(
            {"partition": ["viz"]},
            "option 'partition' must be a non-empty string, not ['viz']",
            id="partition-list",
        ),
        pytest.param(
            {"xvnc": ""}, "option 'xvnc' must be a non-empty string, not ''", id="xvnc-empty"
        ),
        pytest.param(
            {"state_dir": 5}, "option 'state_dir' must be a non-empty string, not 5", id="state-dir"
        ),
        pytest.param(
            {"time_limit": 0},
            "option 'time_limit' must be a Slurm time such as",
            id="time_limit-zero",
        ),
        pytest.param(
            {"time_limit": True}, "option 'time_limit' must be a Slurm time", id="time_limit-bool"
        ),
        pytest.param(
            {"start_timeout": 0},
            "option 'start_timeout' must be a positive number, not 0",
            id="start_timeout-zero",
        ),
        pytest.param(
            {"run_as": "root"},
            "option 'run_as' must be \"gateway\" or \"user\", not 'root'",
            id="run_as",
        ),
        pytest.param(
            {"min_uid": -1}, "option 'min_uid' must be a whole number from 0, not -1", id="min_uid"
        ),
    ],
)
def test_bad_options_are_refused_when_the_instance_is_made(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        realize_service(name="T", count=1, index=0, common_options=options)


async def test_bad_options_stop_the_broker_from_opening(tmp_path: Path) -> None:
    config = write_catalog(tmp_path, tmp_path / "sessions", sbatch_args="--exclusive")
    broker = Broker(load_catalog(config))
    with pytest.raises(ScriptError, match="option 'sbatch_args' must be a list of strings"):
        await broker.open()
    await broker.close()


@pytest.mark.parametrize(
    "size", ["800*600", "800x", "0x600", "800x600x24", "800x600\n", " 800x600"]
)
def test_start_refuses_a_malformed_size_before_submitting(tmp_path: Path, size: str) -> None:
    session = SlurmSession("T", common_options={"state_dir": str(tmp_path / "s")})
    assert session.start("token", options={"size": size}) is False
    assert session.progress().startswith(f"invalid size {size!r}")
    assert not (tmp_path / "s").exists()
    assert session.get_state() == {}


def test_start_without_sbatch_fails_with_a_reason_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    session = SlurmSession("T", common_options={"state_dir": str(tmp_path / "s")})
    assert session.start("token", options={"size": SIZE}) is False
    assert session.progress().startswith("cannot submit the job: cannot run sbatch")
    assert list((tmp_path / "s").iterdir()) == []
    assert session.get_state() == {}


def test_poll_without_a_job_is_false_and_without_squeue_is_unknown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = SlurmSession("T")
    assert session.poll() is False
    session.load_state({"job_id": "7", "folder": str(tmp_path), "host": "n1", "port": 5901})
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert session.poll() is None


def test_state_round_trip_restores_job_address_and_password(tmp_path: Path) -> None:
    folder = tmp_path / "T-0-abc"
    folder.mkdir()
    write_vnc_password_file(folder / "passwd", b"s3cretpw")
    state = {"job_id": "42", "folder": str(folder), "host": "node7", "port": 23456}
    session = SlurmSession("T")
    session.load_state(state)
    assert session.get_state() == state
    assert session.host_port() == ("node7", 23456)
    assert session.password() == b"s3cretpw"
    assert "s3cretpw" not in json.dumps(session.get_state())
    session.load_state({})
    assert session.get_state() == {}
    assert session.host_port() is None
    assert session.password() is None


@pytest.mark.parametrize(
    "state",
    [
        pytest.param({"job_id": 42}, id="numeric-id"),
        pytest.param({"job_id": "42; rm -rf /"}, id="not-an-id"),
        pytest.param({"job_id": "42", "host": "n1"}, id="host-without-port"),
        pytest.param({"job_id": "42", "host": "n1", "port": "5901"}, id="port-string"),
    ],
)
def test_load_state_refuses_what_get_state_never_returns(state: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"^load_state: "):
        SlurmSession("T").load_state(state)


def test_job_status_describes_state_and_reason() -> None:
    assert (
        JobStatus("PENDING", "Resources", "").describe()
        == "PENDING (Resources): waiting for free resources"
    )
    assert (
        JobStatus("PENDING", "ReqNodeNotAvail, UnavailableNodes:n1", "").describe()
        == "PENDING (ReqNodeNotAvail, UnavailableNodes:n1): the nodes it needs are not available"
    )
    assert (
        JobStatus("PENDING", "QOSMaxJobsPerUserLimit", "").describe()
        == "PENDING (QOSMaxJobsPerUserLimit): a limit of its account or quality of service is "
        "reached"
    )
    assert JobStatus("PENDING", "SomethingNew", "").describe() == "PENDING (SomethingNew)"
    assert JobStatus("RUNNING", "None", "n1").describe() == "RUNNING"
    pending = JobStatus("PENDING", "ReqNodeNotAvail, UnavailableNodes:n1", "")
    assert pending.reason_code == "ReqNodeNotAvail"


# ---------------------------------------------------------------------------------------
# Integration: a real Slurm


@pytest.mark.integration
async def test_session_is_a_running_job_reached_with_its_own_password(
    cluster: SlurmCluster, tmp_path: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VIZGATE_TEST_SECRET", "not-for-jobs")
    broker = Broker(load_catalog(write_catalog(tmp_path, state_dir)))
    await broker.open()
    try:
        reservation = await broker.reserve(TYPE, user="alice", options={"size": SIZE})
        attachment = await asyncio.wait_for(broker.attach(reservation.token), scaled(30))
        host, port = attachment.host, attachment.port
        password = attachment.password
        assert password is not None

        assert jobs_named(cluster, JOB_NAME_0) == ["RUNNING"]
        client = await handshake_through_bridge(host, port, password)
        assert f"{client.width}x{client.height}" == SIZE
        assert client.name == TYPE
        # The password guards the server, which listens beyond loopback for remote gateways.
        assert not await asyncio.to_thread(vnc_authenticate, host, port, b"wrong!!!")
        assert listening_addresses(port) & {"0.0.0.0", "::"}
        # The session's folder: private, with the password file in TigerVNC's format.
        (folder,) = state_dir.iterdir()
        assert folder.name.startswith("Slurm_Desktop-0-")
        assert folder.stat().st_mode & 0o777 == 0o700
        assert (folder / "passwd").stat().st_mode & 0o777 == 0o600
        assert read_vnc_password_file(folder / "passwd") == password
        # The job's processes got a reduced copy of the gateway's environment.
        (server,) = [
            pid
            for pid, cmdline in processes_mentioning(folder).items()
            if Path(cmdline.split()[0]).name in {"Xvnc", "Xtigervnc"}
        ]
        environ = Path(f"/proc/{server}/environ").read_bytes().split(b"\0")
        assert b"HOME=" + os.environ["HOME"].encode() in environ
        assert not [item for item in environ if item.startswith(b"VIZGATE_TEST_SECRET=")]

        broker.detach(attachment)
        await asyncio.wait_for(broker.wait_until_idle(), scaled(20))
        assert jobs_named(cluster, JOB_NAME_0) == []
        assert not port_accepts(host, port)
        assert list(state_dir.iterdir()) == []
        (ended,) = broker.history()
        assert ended.end_reason == "disconnected"
        assert not ended.stop_timed_out
    finally:
        await broker.close()


@pytest.mark.integration
async def test_two_instances_are_two_concurrent_jobs_and_a_third_is_refused(
    cluster: SlurmCluster, tmp_path: Path, state_dir: Path
) -> None:
    broker = Broker(load_catalog(write_catalog(tmp_path, state_dir, count=2)))
    await broker.open()
    try:
        first = await broker.reserve(TYPE, user="alice", options={"size": SIZE})
        second = await broker.reserve(TYPE, user="bob", options={"size": "1024x768"})
        with pytest.raises(ReservationError) as refused:
            await broker.reserve(TYPE, user="carol")
        assert refused.value.reason == "no_free_instance"

        attachments = await asyncio.wait_for(
            asyncio.gather(broker.attach(first.token), broker.attach(second.token)), scaled(30)
        )
        assert jobs_named(cluster, "vizgate-Slurm_Desktop-0") == ["RUNNING"]
        assert jobs_named(cluster, "vizgate-Slurm_Desktop-1") == ["RUNNING"]
        addresses = {(a.host, a.port) for a in attachments}
        assert len(addresses) == 2
        sizes = []
        for attachment in attachments:
            assert attachment.password is not None
            client = await handshake_through_bridge(
                attachment.host, attachment.port, attachment.password
            )
            sizes.append(f"{client.width}x{client.height}")
        assert sizes == [SIZE, "1024x768"]
        assert attachments[0].password != attachments[1].password

        for attachment in attachments:
            broker.detach(attachment)
        await asyncio.wait_for(broker.wait_until_idle(), scaled(20))
        assert jobs_named(cluster, "vizgate-Slurm_Desktop-0") == []
        assert jobs_named(cluster, "vizgate-Slurm_Desktop-1") == []
        for host, port in addresses:
            assert not port_accepts(host, port)
    finally:
        await broker.close()


@pytest.mark.integration
@pytest.mark.parametrize(
    ("options", "reason"),
    [
        pytest.param(
            {"partition": "nosuchpartition"},
            "sbatch refused the job: invalid partition specified: nosuchpartition",
            id="impossible-partition",
        ),
        pytest.param(
            {"sbatch_args": ["--constraint=nosuchfeature"]},
            "sbatch refused the job: Batch job submission failed: Invalid feature specification",
            id="impossible-constraint",
        ),
        pytest.param(
            {"partition": DOWN_PARTITION},
            "cannot run: PENDING (PartitionDown): its partition is down",
            id="down",
        ),
        pytest.param(
            {"partition": SHORT_PARTITION, "time_limit": 5},
            # Which of the two Slurm names depends on when its scheduler looks at the job.
            (
                "cannot run: PENDING (PartitionConfig): it asks for more than its partition allows",
                "cannot run: PENDING (PartitionTimeLimit): it asks for more time than its "
                "partition allows",
            ),
            id="over-time-limit",
        ),
        pytest.param(
            {"xvnc": "/nonexistent/Xvnc"},
            # squeue may show the job still COMPLETING when the launcher looks; either way the
            # user reads why, in the job script's words.
            tuple(
                f"ended before its VNC server was ready: {state} (NonZeroExitCode): "
                "Xvnc program not found: /nonexistent/Xvnc"
                for state in ("FAILED", "COMPLETING")
            ),
            id="no-xvnc",
        ),
    ],
)
async def test_a_job_that_cannot_start_fails_with_slurms_reason(
    cluster: SlurmCluster,
    tmp_path: Path,
    state_dir: Path,
    capfd: pytest.CaptureFixture[str],
    options: dict[str, Any],
    reason: str | tuple[str, ...],
) -> None:
    reasons = (reason,) if isinstance(reason, str) else reason
    broker = Broker(load_catalog(write_catalog(tmp_path, state_dir, **options)))
    await broker.open()
    try:
        reservation = await broker.reserve(TYPE, user="alice")
        with pytest.raises(StartError) as failed:
            await asyncio.wait_for(broker.attach(reservation.token), scaled(30))
        # The launcher's last progress message is the user-facing reason of the failure.
        [said] = [r for r in reasons if r in failed.value.user_message]
        assert said in capfd.readouterr().err
        await asyncio.wait_for(broker.wait_until_idle(), scaled(20))
        assert jobs_named(cluster, JOB_NAME_0) == []
        assert list(state_dir.iterdir()) == []
        (ended,) = broker.history()
        assert ended.end_reason == "start_failed"
        assert said in ended.message
    finally:
        await broker.close()


@pytest.mark.integration
def test_start_gives_up_before_the_start_timeout_and_cancels_the_job(
    cluster: SlurmCluster, state_dir: Path
) -> None:
    session = realize_service(
        name=TYPE,
        count=1,
        index=0,
        common_options={
            "state_dir": str(state_dir),
            "start_timeout": 3,
            "sbatch_args": ["--begin=now+1hour"],
        },
    )
    assert session.start("token", options={"size": SIZE}) is False
    assert "did not start within 2.25 s: PENDING (BeginTime)" in session.progress()
    assert jobs_named(cluster, JOB_NAME_0) == []
    assert list(state_dir.iterdir()) == []


@pytest.mark.integration
async def test_progress_reports_the_jobs_state_while_it_waits(
    cluster: SlurmCluster, tmp_path: Path, state_dir: Path
) -> None:
    # A job held by its user pends (JobHeldUser) until released: the broker shows why.
    broker = Broker(
        load_catalog(write_catalog(tmp_path, state_dir, sbatch_args=["--hold"], start_timeout=30))
    )
    await broker.open()
    try:
        reservation = await broker.reserve(TYPE, user="alice", options={"size": SIZE})
        attach = asyncio.ensure_future(broker.attach(reservation.token))

        def progress() -> str:
            (info,) = broker.sessions()
            return info.progress

        await await_until(lambda: "PENDING (JobHeldUser)" in progress(), scaled(10))
        job_id = cluster.run("squeue", "-h", "-n", JOB_NAME_0, "-o", "%i").stdout.strip()
        assert job_id in progress()
        assert cluster.run("scontrol", "release", job_id).returncode == 0
        attachment = await asyncio.wait_for(attach, scaled(30))
        assert port_accepts(attachment.host, attachment.port)
        broker.detach(attachment)
        await asyncio.wait_for(broker.wait_until_idle(), scaled(20))
        assert not port_accepts(attachment.host, attachment.port)
    finally:
        await broker.close()


@pytest.mark.integration
def test_a_fresh_instance_re_adopts_a_running_job_from_its_state(
    cluster: SlurmCluster, state_dir: Path
) -> None:
    options = {"state_dir": str(state_dir)}
    first = realize_service(name=TYPE, count=1, index=0, common_options=options)
    assert first.start("token", options={"size": SIZE}) is True
    state = first.get_state()
    assert set(state) == {"job_id", "folder", "host", "port"}
    status = job_status(state["job_id"])
    assert status is not None
    assert status.state == "RUNNING"

    # A restarted gateway: a new instance, told only the saved state.
    adopted = realize_service(name=TYPE, count=1, index=0, common_options=options)
    adopted.load_state(json.loads(json.dumps(state)))
    assert adopted.poll() is True
    assert adopted.host_port() == (state["host"], state["port"])
    assert adopted.password() == first.password()
    assert vnc_authenticate(state["host"], state["port"], first.password() or b"")

    adopted.stop()
    assert not port_accepts(state["host"], state["port"])
    status = job_status(state["job_id"])
    assert status is not None
    assert status.state == "CANCELLED"
    assert not Path(state["folder"]).exists()
    assert adopted.get_state() == {}
    assert adopted.poll() is False
    assert first.poll() is False


@pytest.mark.integration
def test_a_crashed_vnc_server_ends_the_job_and_its_x_lock_is_removed(
    cluster: SlurmCluster, state_dir: Path
) -> None:
    session = realize_service(
        name=TYPE, count=1, index=0, common_options={"state_dir": str(state_dir)}
    )
    assert session.start("token", options={"size": SIZE}) is True
    state = session.get_state()
    # The job's Xvnc; other processes of the session (a shell polling the port) come and go.
    servers = [
        (pid, cmdline)
        for pid, cmdline in processes_mentioning(Path(state["folder"])).items()
        if Path(cmdline.split()[0]).name in {"Xvnc", "Xtigervnc"}
    ]
    assert len(servers) == 1, servers
    server, cmdline = servers[0]
    display = cmdline.split()[1].removeprefix(":")
    assert display.isdigit(), cmdline
    assert Path(f"/tmp/.X{display}-lock").exists()

    # SIGKILL leaves the X lock files behind; the job script removes those of its own server.
    os.kill(server, signal.SIGKILL)
    assert wait_until(lambda: session.poll() is False, scaled(10), message="poll() not False")

    def job_state() -> str:
        status = job_status(state["job_id"])
        assert status is not None
        return status.state

    # The job lives as long as its server: it ends on its own (exit status 137: FAILED).
    wait_until(lambda: job_state() == "FAILED", scaled(10), message="the job did not end")
    assert not Path(f"/tmp/.X{display}-lock").exists()
    assert not Path(f"/tmp/.X11-unix/X{display}").exists()
    session.stop()
    assert not Path(state["folder"]).exists()


def test_job_status_reads_the_end_of_the_jobs_time() -> None:
    end = JobStatus("RUNNING", "None", "n1", "2026-11-29T18:00:00").end_timestamp
    assert end == datetime.datetime(2026, 11, 29, 18, 0, 0).timestamp()
    for unknown in ("N/A", "Unknown", "NONE", ""):
        assert JobStatus("RUNNING", "None", "n1", unknown).end_timestamp is None


def test_a_script_reports_its_end_time_for_the_current_session_only() -> None:
    session = SlurmSession(TYPE)
    assert session.end_time() is None
    session.set_end_time(1234.5)
    assert session.end_time() == 1234.5
    session.reset()
    assert session.end_time() is None
