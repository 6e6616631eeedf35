"""Slurm sessions whose users pick the partition, the time limit, CPUs, memory or GPUs among the
admin's values (``options.choices``, :mod:`vizgate.choices`): in the sbatch command, the checks
of the values, and on a real Slurm."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from slurm_cluster import GPUS, SHORT_PARTITION, SlurmCluster
from slurm_sessions import JOB_NAME_0, SIZE, TYPE, write_catalog
from support import scaled
from vizgate.broker import Broker
from vizgate.catalog import load_catalog
from vizgate.launchers.slurm import realize_service
from vizgate.launchers.slurm_options import check_options
from vizgate.script_calls import END_TIME_MARGIN


def test_the_chosen_partition_and_time_limit_replace_the_types() -> None:
    session = realize_service(
        name=TYPE,
        common_options={"partition": "viz", "time_limit": "8:00:00", "sbatch_args": ["--x"]},
    )
    argv = session.sbatch_command(
        Path("/s"), SIZE, chosen={"partition": "gpu", "time_limit": "1:00:00"}
    )
    assert argv[5:11] == ["--partition", "gpu", "--time", "1:00:00", "--x", "--output"]


def test_cpus_memory_and_gpus_are_asked_of_slurm_from_the_type_or_the_users_choice() -> None:
    session = realize_service(
        name=TYPE, common_options={"cpus": 2, "memory": "8G", "sbatch_args": ["--x"]}
    )
    argv = session.sbatch_command(Path("/s"), SIZE)
    assert argv[5:9] == ["--cpus-per-task=2", "--mem=8G", "--x", "--output"]
    chosen = session.sbatch_command(
        Path("/s"), SIZE, chosen={"cpus": "8", "memory": "64G", "gpus": "a100:1"}
    )
    assert chosen[5:10] == ["--cpus-per-task=8", "--mem=64G", "--gpus=a100:1", "--x", "--output"]


@pytest.mark.parametrize(
    ("options", "said"),
    [
        ({"cpus": "two"}, "option 'cpus' must be a whole number of CPUs such as 4, not 'two'"),
        ({"cpus": 0}, "option 'cpus' must be a whole number"),
        ({"memory": "16 GB"}, "option 'memory' must be an amount such as \"16G\""),
        ({"gpus": "a100:0"}, "option 'gpus' must be a number of GPUs"),
        (
            {"choices": {"gpus": ["1", "2", "lots"]}},
            "option 'choices.gpus[2]' must be a number of GPUs such as 1, or a type and number "
            "such as \"a100:1\", not 'lots'",
        ),
        ({"choices": {"memory": ["4G", "--mem=1"]}}, "option 'choices.memory[1]' must be"),
    ],
)
def test_bad_resources_are_refused_with_the_option_named(
    options: dict[str, object], said: str
) -> None:
    assert any(said in problem for problem in check_options(options)), check_options(options)


def test_good_resources_pass() -> None:
    assert (
        check_options(
            {"cpus": "4", "memory": 2048, "gpus": "l40s:2", "choices": {"cpus": ["1", "16"]}}
        )
        == []
    )


def environment_of_xvnc(port: int) -> dict[str, str]:
    """The environment of the Xvnc that serves ``port`` on this (the only) node."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            arguments = (entry / "cmdline").read_bytes().split(b"\0")
            if not arguments[0].endswith(b"Xvnc") or str(port).encode() not in arguments:
                continue
            pairs = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        return dict(pair.decode().partition("=")[::2] for pair in pairs if b"=" in pair)
    raise AssertionError(f"no Xvnc serves port {port}")


@pytest.mark.integration
async def test_a_job_gets_the_cpus_memory_and_gpus_its_user_picked(
    cluster: SlurmCluster, tmp_path: Path, state_dir: Path
) -> None:
    choices = {"cpus": ["1", "2"], "memory": ["100M", "200M"], "gpus": ["1", str(GPUS)]}
    broker = Broker(load_catalog(write_catalog(tmp_path, state_dir, choices=choices)))
    await broker.open()
    try:
        reservation = await broker.reserve(
            TYPE, user="alice", options={"cpus": "2", "memory": "200M", "gpus": str(GPUS)}
        )
        attachment = await asyncio.wait_for(broker.attach(reservation.token), scaled(30))
        result = cluster.run("squeue", "-h", "-n", JOB_NAME_0, "-o", "%C %m %T")
        assert result.stdout.split() == ["2", "200M", "RUNNING"]
        # What Slurm allocated, not only what was asked for: the node's GPUs are in use.
        used = cluster.run("sinfo", "-h", "-N", "-O", "GresUsed:40").stdout.strip()
        assert used.startswith(f"gpu:{GPUS}"), used
        # The desktop's programs see the job's GPUs, as Slurm names them to CUDA and OpenCL.
        [info] = broker.sessions()
        assert info.port is not None
        environment = environment_of_xvnc(info.port)
        assert environment.get("CUDA_VISIBLE_DEVICES") == ",".join(map(str, range(GPUS)))
        assert environment.get("SLURM_JOB_GPUS") == ",".join(map(str, range(GPUS)))
        broker.detach(attachment)
        await asyncio.wait_for(broker.wait_until_idle(), scaled(20))
    finally:
        await broker.close()


@pytest.mark.integration
async def test_a_job_runs_in_the_partition_and_for_the_time_its_user_picked(
    cluster: SlurmCluster, tmp_path: Path, state_dir: Path
) -> None:
    choices = {"partition": [cluster.partition, SHORT_PARTITION], "time_limit": ["30", "1"]}
    broker = Broker(load_catalog(write_catalog(tmp_path, state_dir, choices=choices)))
    await broker.open()
    try:
        reservation = await broker.reserve(
            TYPE, user="alice", options={"partition": SHORT_PARTITION, "time_limit": "1"}
        )
        attachment = await asyncio.wait_for(broker.attach(reservation.token), scaled(30))
        result = cluster.run("squeue", "-h", "-n", JOB_NAME_0, "-o", "%P %l %T")
        assert result.stdout.split() == [SHORT_PARTITION, "1:00", "RUNNING"]
        # The job's time limit is the session's: the broker ends it a little before, and the
        # viewer warns about it.
        [info] = broker.sessions()
        assert info.ends_because == "time_limit"
        assert info.ends_at is not None
        assert 0 < info.ends_at - time.time() < 60 - END_TIME_MARGIN + 1
        broker.detach(attachment)
        await asyncio.wait_for(broker.wait_until_idle(), scaled(20))
    finally:
        await broker.close()
