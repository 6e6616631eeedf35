"""The options of a Slurm session type (:mod:`vizgate.launchers.slurm`), checked when an
instance is made, so that a bad catalog stops the gateway at start-up with every problem named.

Options (the session type's ``options``; all optional):

* ``partition`` (str): ``sbatch --partition``; default: the cluster's default partition.
* ``time_limit`` (str or int): ``sbatch --time``, e.g. ``"8:00:00"`` or minutes as a number;
  default: the partition's limit.
* ``cpus`` (int): ``sbatch --cpus-per-task``, CPUs for the desktop and what runs in it.
* ``memory`` (str or int): ``sbatch --mem``, e.g. ``"16G"`` or megabytes as a number.
* ``gpus`` (str or int): ``sbatch --gpus``, e.g. ``1`` or ``"a100:1"``.
* ``sbatch_args`` (list of str): more ``sbatch`` arguments, e.g. ``["--gres=gpu:1",
  "--constraint=viz"]``. A list, never one string: nothing is split or given to a shell.
* ``xvnc`` (str): the Xvnc program on the compute nodes; default ``Xvnc``.
* ``state_dir`` (str): where session folders are made; default
  ``~/.local/state/vizgate/slurm`` (``~``: the home of the account the job runs as). Must be
  shared with the compute nodes.
* ``run_as`` (``"gateway"`` or ``"user"``): whose account the jobs run as; default
  ``"gateway"``. ``"user"`` needs the gateway to run as root.
* ``min_uid`` (int): with ``run_as`` ``"user"``, the lowest uid that may run sessions; default
  1000. ``root`` never may.
* ``start_timeout`` (seconds): the broker's start timeout (default 120 s); ``start()`` gives up
  (and cancels the job) a little before it, so that it can still say why.
* ``sizes`` (list of ``WIDTHxHEIGHT``): the desktop sizes offered, read by vizgate itself.
* ``choices``: with ``partition``, ``time_limit``, ``cpus``, ``memory`` or ``gpus`` among them
  (:mod:`vizgate.choices`), each user picks that option's value for the session among the
  admin's, in place of the option; each value offered is checked as the option would be.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["RESOURCE_OPTIONS", "check_options", "resource_problem"]

_MEMORY = re.compile(r"[1-9][0-9]*[KMGT]?")
_GPUS = re.compile(r"(?:[A-Za-z0-9_.-]+:)?[1-9][0-9]*")


def _whole(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value > 0
    return isinstance(value, str) and value.isdigit() and int(value) > 0


def _memory(value: Any) -> bool:
    return _whole(value) or (isinstance(value, str) and bool(_MEMORY.fullmatch(value)))


def _gpus(value: Any) -> bool:
    return _whole(value) or (isinstance(value, str) and bool(_GPUS.fullmatch(value)))


#: The per-session resources a type (or its user, through ``choices``) asks of Slurm: the
#: option, its ``sbatch`` flag, how a value is checked, and what a good value looks like.
RESOURCE_OPTIONS: dict[str, tuple[str, Callable[[Any], bool], str]] = {
    "cpus": ("--cpus-per-task", _whole, "a whole number of CPUs such as 4"),
    "memory": ("--mem", _memory, 'an amount such as "16G" or a whole number of megabytes'),
    "gpus": ("--gpus", _gpus, 'a number of GPUs such as 1, or a type and number such as "a100:1"'),
}


def resource_problem(name: str, value: Any) -> str | None:
    """Why ``value`` cannot be the resource option ``name`` (None if it can)."""
    _, good, expected = RESOURCE_OPTIONS[name]
    return None if good(value) else f"must be {expected}, not {value!r}"


def check_options(options: Mapping[str, Any]) -> list[str]:
    """Every problem with the launcher's options (``options``: a session type's), as
    sentences naming the option; ``[]`` when there is none."""
    problems = []
    for key in ("partition", "xvnc", "state_dir"):
        value = options.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            problems.append(f"option {key!r} must be a non-empty string, not {value!r}")
    time_limit = options.get("time_limit")
    if time_limit is not None and not (
        (isinstance(time_limit, str) and time_limit.strip())
        or (isinstance(time_limit, int) and not isinstance(time_limit, bool) and time_limit > 0)
    ):
        problems.append(
            "option 'time_limit' must be a Slurm time such as \"8:00:00\" or a whole number of "
            f"minutes, not {time_limit!r}"
        )
    for name in RESOURCE_OPTIONS:
        if options.get(name) is not None:
            problem = resource_problem(name, options[name])
            if problem is not None:
                problems.append(f"option {name!r} {problem}")
    choices = options.get("choices")
    if isinstance(choices, Mapping):
        for name, values in choices.items():
            if name not in RESOURCE_OPTIONS or not isinstance(values, list):
                continue
            for index, value in enumerate(values):
                problem = resource_problem(name, value)
                if problem is not None:
                    problems.append(f"option 'choices.{name}[{index}]' {problem}")
    sbatch_args = options.get("sbatch_args")
    if sbatch_args is not None:
        if isinstance(sbatch_args, str):
            problems.append(
                "option 'sbatch_args' must be a list of strings, one per argument (e.g. "
                '["--gres=gpu:1", "--constraint=viz"]), not one string: it is never split'
            )
        elif not isinstance(sbatch_args, list | tuple) or not all(
            isinstance(arg, str) and arg for arg in sbatch_args
        ):
            problems.append(
                f"option 'sbatch_args' must be a list of non-empty strings, not {sbatch_args!r}"
            )
    run_as = options.get("run_as")
    if run_as is not None and run_as not in ("gateway", "user"):
        problems.append(f'option \'run_as\' must be "gateway" or "user", not {run_as!r}')
    min_uid = options.get("min_uid")
    if min_uid is not None and (
        not isinstance(min_uid, int) or isinstance(min_uid, bool) or min_uid < 0
    ):
        problems.append(f"option 'min_uid' must be a whole number from 0, not {min_uid!r}")
    start_timeout = options.get("start_timeout")
    if start_timeout is not None and (
        not isinstance(start_timeout, int | float)
        or isinstance(start_timeout, bool)
        or not math.isfinite(start_timeout)
        or start_timeout <= 0
    ):
        problems.append(f"option 'start_timeout' must be a positive number, not {start_timeout!r}")
    return problems
