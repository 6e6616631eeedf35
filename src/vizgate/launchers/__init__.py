"""Session scripts that ship with vizgate, usable from the catalog without writing one.

A session type names one of them with ``"script": "builtin:NAME"`` instead of a file path:

* ``builtin:slurm``: each session is a Slurm batch job running a password-protected Xvnc on a
  compute node (:mod:`vizgate.launchers.slurm`; it runs ``sbatch``, ``squeue`` and ``scancel``
  through :mod:`vizgate.launchers.slurm_commands`, a helper module, not a script).

The catalog resolves the name to the launcher's file with :func:`builtin_script` and vizgate then
loads it like any admin's script (``realize_service`` once per index).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["BUILTIN_PREFIX", "BUILTIN_SCRIPTS", "builtin_script"]

#: What a ``script`` value starts with when it names a built-in launcher.
BUILTIN_PREFIX = "builtin:"

#: Built-in launcher name -> its file in this package.
BUILTIN_SCRIPTS: dict[str, str] = {
    "slurm": "slurm.py",
}


def builtin_script(name: str) -> Path:
    """The file of the built-in launcher called ``name`` (without the ``builtin:`` prefix).

    Raises:
        KeyError: no built-in launcher has that name.
    """
    return Path(__file__).resolve().parent / BUILTIN_SCRIPTS[name]
