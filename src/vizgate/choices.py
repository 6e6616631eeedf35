"""Launch choices: what users pick for a session besides its size (``options.choices``).

An admin lists, per session type, the values users may pick for a few of the options the
type's script reads::

    "options": {"choices": {"time_limit": ["2:00:00", "8:00:00"], "partition": ["viz", "gpu"]}}

* the catalog checks the lists (:func:`choices_problems`): names are lower-case words, values
  non-empty strings, the first value of each list is its default;
* the portal's launch form offers one list per choice, the default selected; ``/v1/reserve``
  takes them as the query fields they are named after (the seed's ``k=v``);
* the broker refuses a value that is not listed and puts the chosen values, defaults for those
  not given, into the options ``start()`` receives (:func:`settle`), beside ``size`` and
  ``username``. A script reads them there; the Slurm launcher takes ``partition`` and
  ``time_limit`` from them (:mod:`vizgate.launchers.slurm`).

Users pick only among the admin's values: nothing they send reaches a script unless listed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from vizgate.catalog import ServiceType

__all__ = [
    "CHOICES_OPTION",
    "MAX_VALUE_LENGTH",
    "RESERVED_NAMES",
    "choices_problems",
    "label",
    "launch_options",
    "settle",
]

#: The type option that lists the choices.
CHOICES_OPTION: Final = "choices"
#: Option names vizgate gives ``start()`` itself, which a choice may not take.
RESERVED_NAMES: Final = frozenset({"size", "username", "token", "service"})
#: The longest value a choice may list.
MAX_VALUE_LENGTH: Final = 200

_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")


def choices_problems(value: Any) -> Iterator[tuple[str, int | None, str]]:
    """Every problem with an ``options.choices`` value: ``(name, index, why)``, where the
    choice's name is ``""`` for the value itself and the index is that of a bad value."""
    if not isinstance(value, Mapping):
        yield (
            "",
            None,
            (
                "must be an object naming the options users choose, each with the values they may "
                'pick (the first is the default), e.g. {"time_limit": ["2:00:00", "8:00:00"]}'
            ),
        )
        return
    for name, values in value.items():
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            yield (
                str(name),
                None,
                (
                    "is not a choice name: a lower-case letter, then up to 39 lower-case letters, "
                    "digits or _"
                ),
            )
            continue
        if name in RESERVED_NAMES:
            yield name, None, "is given to start() by vizgate itself and cannot be a choice"
            continue
        if not isinstance(values, list) or not values:
            yield (
                name,
                None,
                (
                    "must be a non-empty list of the values users may pick (the first is the "
                    "default)"
                ),
            )
            continue
        seen: set[str] = set()
        for index, item in enumerate(values):
            if not isinstance(item, str) or not item.strip() or len(item) > MAX_VALUE_LENGTH:
                yield (
                    name,
                    index,
                    (f"must be a non-empty string of at most {MAX_VALUE_LENGTH} characters"),
                )
            elif not item.isprintable():
                yield name, index, "must not hold control characters"
            elif item in seen:
                yield name, index, f"{item!r} is listed twice"
            else:
                seen.add(item)


def settle(
    service: str, choices: Mapping[str, tuple[str, ...]], given: Mapping[str, Any]
) -> dict[str, str]:
    """The value of every choice of the type ``service``: what ``given`` picked, else the
    default.

    Raises:
        ValueError: ``given`` picked a value that is not listed (the message names the values
            that are).
    """
    settled: dict[str, str] = {}
    for name, values in choices.items():
        picked = given.get(name)
        if picked is None or picked == "":
            settled[name] = values[0]
        elif picked in values:
            settled[name] = str(picked)
        else:
            raise ValueError(
                f"{name} {str(picked)!r} is not offered for {service!r}; choose one of: "
                + ", ".join(values)
            )
    return settled


def launch_options(service: ServiceType, given: Mapping[str, Any]) -> dict[str, Any]:
    """What ``start()`` of a session of ``service`` receives from a reservation's ``given``
    options: them, with the size (default: the first offered) and every choice settled.

    Raises:
        ValueError: a size or a choice's value that the type does not offer (the message names
            those it does).
    """
    options = dict(given)
    size = str(options.get("size") or service.sizes[0])
    if size not in service.sizes:
        raise ValueError(
            f"size {size!r} is not offered for {service.name!r}; "
            f"choose one of: {', '.join(service.sizes)}"
        )
    options["size"] = size
    options.update(settle(service.name, service.choices, options))
    return options


#: Names whose plain spelling reads wrong on a form.
_LABELS = {"cpus": "CPUs", "gpus": "GPUs"}


def label(name: str) -> str:
    """A choice's name for people: ``time_limit`` is ``Time limit``, ``gpus`` ``GPUs``."""
    return _LABELS.get(name) or name.replace("_", " ").capitalize()
