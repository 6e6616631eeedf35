"""The session catalog: ``external_services.json`` parsed into typed, immutable session types.

The file format is the seed's ("Remote Session Configuration"), unchanged: one JSON object
whose keys are session type names; each value is an object with three required keys,
``script`` (a Python file, relative to the configuration file's folder, or ``"builtin:NAME"``
for a launcher shipped with vizgate, see :mod:`vizgate.launchers`), ``count`` (the most
instances that may run at once) and ``options`` (handed to the script as ``common_options``).
vizgate itself reads ``options.sizes``, ``options.group``, ``options.file_ext``,
``options.choices`` (what users pick at launch, :mod:`vizgate.choices`) and
``options.max_per_user`` (the most sessions of the type one user may have at once), and the
broker's timeouts ``options.start_timeout``, ``options.idle_timeout``,
``options.max_lifetime`` and ``options.linger``; every other option passes through untouched.

Parsing never stops at the first problem: :func:`parse_catalog` raises one
:class:`~vizgate.exceptions.ConfigError` carrying every problem found, each naming the file,
the key path (``"Local Software Session" > options > sizes[1]``) and the reason, so an admin
fixes the file in one pass. Things that are legal but probably wrong (a 12080 pixel wide
window) are warnings on the :class:`Catalog` instead.
"""

from __future__ import annotations

import copy
import difflib
import json
import math
import os
import re
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vizgate.choices import CHOICES_OPTION, choices_problems
from vizgate.exceptions import ConfigError, ConfigProblem
from vizgate.launchers import BUILTIN_PREFIX, BUILTIN_SCRIPTS, builtin_script
from vizgate.window_sizes import DEFAULT_SIZES, MAX_SANE_DIMENSION, parse_size, typo_hint

__all__ = [
    "MAX_PER_USER_OPTION",
    "TIMEOUT_OPTIONS",
    "Catalog",
    "ServiceType",
    "load_catalog",
    "parse_catalog",
]

#: Options the broker reads as durations in seconds; the catalog only checks their type.
TIMEOUT_OPTIONS: tuple[str, ...] = (
    "start_timeout",
    "ready_timeout",
    "idle_timeout",
    "max_lifetime",
    "linger",
)

#: The option capping how many sessions of a type one user may have at once.
MAX_PER_USER_OPTION = "max_per_user"

_REQUIRED_KEYS: tuple[str, ...] = ("script", "count", "options")

# --- immutable views ------------------------------------------------------------------------


def _freeze(value: Any) -> Any:
    """A read-only deep copy of a JSON value: objects become mapping proxies, lists tuples."""
    if isinstance(value, Mapping):
        return types.MappingProxyType({key: _freeze(item) for key, item in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_freeze(item) for item in value)
    return copy.deepcopy(value)


def _thaw(value: Any) -> Any:
    """The inverse of :func:`_freeze`: plain, mutable ``dict`` and ``list`` as JSON gives them."""
    if isinstance(value, Mapping):
        return {key: _thaw(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_thaw(item) for item in value]
    return copy.deepcopy(value)


@dataclass(frozen=True)
class ServiceType:
    """One session type of the catalog: a top-level key of ``external_services.json``.

    Attributes:
        name: the type's name, as the admin wrote it; users see it and the seed's
            ``/v1/reserve/{servicename}`` uses it.
        script: absolute path of the Python file that starts and stops sessions of this type.
        count: the most sessions of this type that may run at once; scripts are realized with
            indexes ``0 .. count-1``.
        options: the type's ``options``, read-only all the way down (nested objects are
            mapping proxies, lists are tuples). Scripts get :meth:`options_dict` instead.
        sizes: the window sizes offered to users: ``options["sizes"]`` or
            :data:`~vizgate.window_sizes.DEFAULT_SIZES`.
        group: only members of this group may use the type; None means everyone.
        file_ext: file extensions this type opens (``options["file_ext"]``), or ``()``.
        choices: what users pick at launch, name -> the values offered, the default first
            (``options["choices"]``, :mod:`vizgate.choices`).
    """

    name: str
    script: Path
    count: int
    options: Mapping[str, Any] = field(hash=False)
    sizes: tuple[str, ...]
    group: str | None
    file_ext: tuple[str, ...]
    choices: Mapping[str, tuple[str, ...]] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        # Whoever builds a ServiceType (the catalog, a test, a launcher) gets the same
        # guarantee: nothing reachable from it can be changed afterwards.
        object.__setattr__(self, "script", Path(self.script))
        object.__setattr__(self, "options", _freeze(_thaw(self.options)))
        object.__setattr__(self, "sizes", tuple(self.sizes))
        object.__setattr__(self, "file_ext", tuple(self.file_ext))
        object.__setattr__(
            self,
            "choices",
            types.MappingProxyType({name: tuple(values) for name, values in self.choices.items()}),
        )

    def options_dict(self) -> dict[str, Any]:
        """A fresh, mutable deep copy of ``options``: a script's ``common_options``."""
        thawed: dict[str, Any] = _thaw(self.options)
        return thawed


@dataclass(frozen=True)
class Catalog:
    """Every session type of one configuration file, in file order.

    Iterating yields :class:`ServiceType` objects (not names); ``catalog[name]`` finds one.

    Attributes:
        path: the configuration file, absolute.
        types: name -> type, read-only, in the order the file lists them.
        warnings: problems that do not stop vizgate (e.g. an unusually large window size).
    """

    path: Path
    types: Mapping[str, ServiceType] = field(hash=False)
    warnings: tuple[ConfigProblem, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "types", types.MappingProxyType(dict(self.types)))
        object.__setattr__(self, "warnings", tuple(self.warnings))

    def __getitem__(self, name: str) -> ServiceType:
        """The type called ``name``.

        Raises:
            KeyError: no type has that name.
        """
        return self.types[name]

    def __iter__(self) -> Iterator[ServiceType]:
        return iter(self.types.values())

    def __len__(self) -> int:
        return len(self.types)

    def __contains__(self, name: object) -> bool:
        return name in self.types

    def get(self, name: str) -> ServiceType | None:
        """The type called ``name``, or None."""
        return self.types.get(name)

    @property
    def instance_count(self) -> int:
        """How many instances all types together allow (the sum of every ``count``)."""
        return sum(service.count for service in self)


# --- reading --------------------------------------------------------------------------------


def load_catalog(path: str | os.PathLike[str]) -> Catalog:
    """Read and parse a configuration file.

    Args:
        path: the ``external_services.json`` file; scripts are looked up beside it.

    Raises:
        ConfigError: the file cannot be read, or has problems (all of them are reported).
    """
    file = Path(path)
    try:
        # utf-8-sig: Windows editors like to start a JSON file with a byte order mark.
        text = file.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError([ConfigProblem(str(file), "", "no such file")]) from None
    except IsADirectoryError:
        raise ConfigError(
            [ConfigProblem(str(file), "", "is a directory, not a configuration file")]
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [ConfigProblem(str(file), "", f"is not UTF-8 text (byte {exc.start} is invalid)")]
        ) from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError([ConfigProblem(str(file), "", f"cannot be read: {reason}")]) from None
    return parse_catalog(text, file)


def parse_catalog(text: str, path: Path) -> Catalog:
    """Parse the text of a configuration file.

    Args:
        text: the JSON text.
        path: the file it came from: named in every problem, and relative ``script`` paths are
            resolved from its folder. The file itself is not read.

    Returns:
        The catalog, with any warnings in :attr:`Catalog.warnings`.

    Raises:
        ConfigError: carrying every problem found.
    """
    return _Parser(Path(path)).parse(text)


# --- validation -----------------------------------------------------------------------------


class _JSONObject(dict[str, Any]):
    """A decoded JSON object that remembers which keys the text gave more than once."""

    duplicates: dict[str, int]


def _object_pairs(pairs: list[tuple[str, Any]]) -> _JSONObject:
    obj = _JSONObject()
    seen: dict[str, int] = {}
    for key, value in pairs:
        seen[key] = seen.get(key, 0) + 1
        obj[key] = value
    obj.duplicates = {key: n for key, n in seen.items() if n > 1}
    return obj


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _child(key_path: str, key: str) -> str:
    label = key if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) else _quote(key)
    return f"{key_path} > {label}" if key_path else label


def _describe(value: Any) -> str:
    """How a JSON value reads in a message: ``true``, ``2.5``, ``the string "2"``, ``a list``."""
    if value is None or isinstance(value, bool | int | float):
        return json.dumps(value)
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"the string {_quote(shown)}"
    if isinstance(value, list):
        return "an empty list" if not value else "a list"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _is_int(value: Any) -> bool:
    # JSON true/false decode to bool, a subclass of int; "count": true is not a count.
    return isinstance(value, int) and not isinstance(value, bool)


class _Parser:
    """Walks the decoded JSON once, collecting errors and warnings with their key paths."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = str(path)
        self.folder = Path(os.path.abspath(path)).parent
        self.errors: list[ConfigProblem] = []
        self.warnings: list[ConfigProblem] = []

    def error(self, key_path: str, message: str) -> None:
        self.errors.append(ConfigProblem(self.file, key_path, message))

    def warn(self, key_path: str, message: str) -> None:
        self.warnings.append(ConfigProblem(self.file, key_path, message))

    def parse(self, text: str) -> Catalog:
        try:
            document = json.loads(text, object_pairs_hook=_object_pairs)
        except json.JSONDecodeError as exc:
            self.error("", f"is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}")
            raise ConfigError(self.errors) from None
        except RecursionError:
            self.error("", "is not usable JSON: it is nested too deeply")
            raise ConfigError(self.errors) from None
        except ValueError as exc:
            # Valid JSON Python will not hold, e.g. an integer of more than 4300 digits.
            self.error("", f"is not usable JSON: {exc}")
            raise ConfigError(self.errors) from None

        # JSON keeps only the last of repeated keys; an admin who pasted a type twice would
        # silently lose one, so a repeated key is an error at any depth.
        self.check_duplicates(document, "")

        if not isinstance(document, Mapping):
            self.error(
                "",
                "the top level must be a JSON object mapping session type names to their "
                f"descriptions, not {_describe(document)}",
            )
            raise ConfigError(self.errors)
        if not document:
            self.error(
                "",
                'defines no session types; add at least one, e.g. {"My Session": '
                '{"script": "desktop_session.py", "count": 1, "options": {}}}',
            )
            raise ConfigError(self.errors)

        service_types: dict[str, ServiceType] = {}
        for name, spec in document.items():
            service = self.service_type(name, spec)
            if service is not None:
                service_types[name] = service
        if self.errors:
            raise ConfigError(self.errors)
        return Catalog(
            path=Path(os.path.abspath(self.path)),
            types=service_types,
            warnings=tuple(self.warnings),
        )

    def check_duplicates(self, value: Any, key_path: str) -> None:
        if isinstance(value, _JSONObject):
            for key, times in value.duplicates.items():
                what = "session type" if not key_path else "key"
                self.error(
                    _child(key_path, key) if key_path else _quote(key),
                    f"{what} given {times} times; JSON keeps only the last one and would "
                    "silently drop the others",
                )
            for key, item in value.items():
                self.check_duplicates(item, _child(key_path, key) if key_path else _quote(key))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                self.check_duplicates(item, f"{key_path}[{index}]")

    def service_type(self, name: str, spec: Any) -> ServiceType | None:
        where = _quote(name)
        errors_before = len(self.errors)
        if not name.strip():
            self.error(where, "a session type needs a name that is not blank")
        elif "/" in name:
            self.warn(
                where,
                'contains "/", which clients cannot use in /v1/reserve/{servicename} URLs',
            )
        if not isinstance(spec, Mapping):
            self.error(
                where,
                f'must be an object with "script", "count" and "options", not {_describe(spec)}',
            )
            return None

        for key in _REQUIRED_KEYS:
            if key not in spec:
                self.error(_child(where, key), f"required key is missing; {_REQUIRED_HELP[key]}")
        for key in spec:
            if key not in _REQUIRED_KEYS:
                close = difflib.get_close_matches(key, _REQUIRED_KEYS, n=1, cutoff=0.8)
                hint = f" (did you mean {_quote(close[0])}?)" if close else ""
                self.warn(
                    _child(where, key),
                    f"unknown key{hint}; a session type has only "
                    '"script", "count" and "options", so it is ignored',
                )

        script = self.script(where, spec["script"]) if "script" in spec else None
        count = self.count(where, spec["count"]) if "count" in spec else None
        options = self.options(where, spec["options"]) if "options" in spec else None

        if len(self.errors) > errors_before or script is None or count is None or options is None:
            return None
        return ServiceType(
            name=name,
            script=script,
            count=count,
            options=options,
            sizes=tuple(options.get("sizes", DEFAULT_SIZES)),
            group=options.get("group"),
            file_ext=tuple(options.get("file_ext", ())),
            choices=options.get(CHOICES_OPTION, {}),
        )

    def script(self, where: str, value: Any) -> Path | None:
        key_path = _child(where, "script")
        if not isinstance(value, str) or not value.strip():
            self.error(
                key_path,
                "must be a non-empty string naming a Python file (relative to the folder of "
                f"this configuration file), not {_describe(value)}",
            )
            return None
        if value.startswith(BUILTIN_PREFIX):
            return self.builtin_script(key_path, value)
        try:
            resolved = (self.folder / value).resolve()
            exists, is_file = resolved.exists(), resolved.is_file()
        except (OSError, RuntimeError, ValueError) as exc:
            # A symlink loop, an embedded NUL byte, a name too long for the file system.
            self.error(key_path, f"{_quote(value)} is not a usable path: {exc}")
            return None
        if not exists:
            self.error(key_path, f"script file not found: looked for {resolved}")
            return None
        if not is_file:
            self.error(key_path, f"{resolved} is not a file")
            return None
        return resolved

    def builtin_script(self, key_path: str, value: str) -> Path | None:
        name = value[len(BUILTIN_PREFIX) :]
        if name not in BUILTIN_SCRIPTS:
            known = ", ".join(_quote(BUILTIN_PREFIX + known) for known in sorted(BUILTIN_SCRIPTS))
            self.error(
                key_path,
                f"{_quote(value)} is not a built-in script; the built-in ones are: {known}",
            )
            return None
        return builtin_script(name)

    def count(self, where: str, value: Any) -> int | None:
        if not _is_int(value) or value < 1:
            self.error(
                _child(where, "count"),
                "must be a positive whole number (the most sessions of this type that may "
                f"run at once), not {_describe(value)}",
            )
            return None
        count: int = value
        return count

    def options(self, where: str, value: Any) -> dict[str, Any] | None:
        key_path = _child(where, "options")
        if not isinstance(value, Mapping):
            self.error(
                key_path,
                "must be an object (given to the script as common_options; {} when there is "
                f"nothing to say), not {_describe(value)}",
            )
            return None
        options: dict[str, Any] = _thaw(value)
        if "sizes" in options:
            self.sizes(_child(key_path, "sizes"), options["sizes"])
        if "group" in options:
            group = options["group"]
            if not isinstance(group, str) or not group.strip():
                self.error(
                    _child(key_path, "group"),
                    "must be a non-empty string naming the group whose members may use this "
                    f"session type (leave it out to allow everyone), not {_describe(group)}",
                )
        if "file_ext" in options:
            self.file_ext(_child(key_path, "file_ext"), options["file_ext"])
        if CHOICES_OPTION in options:
            choices_path = _child(key_path, CHOICES_OPTION)
            for name, index, reason in choices_problems(options[CHOICES_OPTION]):
                path = _child(choices_path, name) if name else choices_path
                self.error(path if index is None else f"{path}[{index}]", reason)
        if "vnc_password_file" in options:
            password_file = options["vnc_password_file"]
            if not isinstance(password_file, str) or not password_file.strip():
                self.error(
                    _child(key_path, "vnc_password_file"),
                    "must be the path of a VNC password file (as vncpasswd writes it), "
                    f"not {_describe(password_file)}",
                )
        if MAX_PER_USER_OPTION in options:
            limit = options[MAX_PER_USER_OPTION]
            if not _is_int(limit) or limit < 1:
                self.error(
                    _child(key_path, MAX_PER_USER_OPTION),
                    "must be a positive whole number (the most sessions of this type one user "
                    f"may have at once; leave it out for no limit), not {_describe(limit)}",
                )
        for key in TIMEOUT_OPTIONS:
            if key in options:
                seconds = options[key]
                if (
                    not isinstance(seconds, int | float)
                    or isinstance(seconds, bool)
                    or not math.isfinite(seconds)
                    or seconds < 0
                ):
                    self.error(
                        _child(key_path, key),
                        f"must be a number of seconds, 0 or more, not {_describe(seconds)}",
                    )
        return options

    def sizes(self, key_path: str, value: Any) -> None:
        if not isinstance(value, list):
            self.error(
                key_path,
                'must be a list of window sizes such as ["1600x1200", "1920x1080"], '
                f"not {_describe(value)}",
            )
            return
        if not value:
            self.error(
                key_path,
                "must list at least one window size; leave it out to offer the defaults "
                f"({', '.join(DEFAULT_SIZES)})",
            )
            return
        seen: set[str] = set()
        for index, item in enumerate(value):
            item_path = f"{key_path}[{index}]"
            if not isinstance(item, str):
                self.error(
                    item_path,
                    f'must be a string WIDTHxHEIGHT such as "1600x1200", not {_describe(item)}',
                )
                continue
            try:
                width, height = parse_size(item)
            except ValueError:
                self.error(
                    item_path,
                    f"{_quote(item)} is not a window size; write WIDTHxHEIGHT with two "
                    'positive whole numbers and a lower-case x, e.g. "1600x1200"',
                )
                continue
            if item in seen:
                self.warn(item_path, f"{_quote(item)} is listed more than once")
            seen.add(item)
            self.check_dimensions(item_path, item, width, height)

    def check_dimensions(self, key_path: str, item: str, width: int, height: int) -> None:
        too_big = []
        if width > MAX_SANE_DIMENSION:
            too_big.append(f"{width} pixels wide")
        if height > MAX_SANE_DIMENSION:
            too_big.append(f"{height} pixels tall")
        if not too_big:
            return
        hint = typo_hint(width, height)
        self.warn(
            key_path,
            f"{_quote(item)} is {' and '.join(too_big)}; more than {MAX_SANE_DIMENSION} is "
            "unusual" + (f" (a typo for {hint}?)" if hint else ""),
        )

    def file_ext(self, key_path: str, value: Any) -> None:
        if not isinstance(value, list):
            self.error(
                key_path,
                f'must be a list of file extensions such as [".evsn"], not {_describe(value)}',
            )
            return
        for index, item in enumerate(value):
            if not isinstance(item, str) or not item:
                self.error(
                    f"{key_path}[{index}]",
                    f"must be a non-empty string, not {_describe(item)}",
                )


_REQUIRED_HELP: dict[str, str] = {
    "script": "it names the Python file that starts and stops sessions of this type",
    "count": "it says how many sessions of this type may run at once",
    "options": 'it holds the options given to the script ({} when there are none); "sizes" '
    'and "group" are read by vizgate',
}
