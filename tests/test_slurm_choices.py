"""Slurm sessions whose users pick the partition and the time limit among the admin's values
(``options.choices``, :mod:`vizgate.choices`): in the sbatch command, and on a real Slurm."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from slurm_cluster import SHORT_PARTITION, SlurmCluster
from slurm_sessions import JOB_NAME_0, SIZE, TYPE, write_catalog
from support import scaled
from vizgate.broker import Broker
from vizgate.catalog import load_catalog
from vizgate.launchers.slurm import realize_service
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
