"""``python -m vizgate``: the same command line as the ``vizgate`` console script."""

from vizgate.cli import main

__all__: list[str] = []

if __name__ == "__main__":
    raise SystemExit(main())
