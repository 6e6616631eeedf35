"""Tests of vizgate.catalog: the seed's external_services.json into typed session types."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vizgate.catalog import (
    Catalog,
    ServiceType,
    load_catalog,
    parse_catalog,
)
from vizgate.exceptions import ConfigError, ConfigProblem
from vizgate.window_sizes import DEFAULT_SIZES, MAX_SANE_DIMENSION, parse_size

# The example configuration of the seed ("Remote Session Configuration"), verbatim.
SEED_CONFIG = """{
"Local Software Session": {"script": "desktop_session.py", "count": 2,
"options": {"sizes": ["12080x1024", "1600x1200"], "display_base": 100}},
"Cluster Node Session": {"script": "x11vnc_desktop_session.py", "count": 1,
"options": {"sizes": ["1600x1200"], "group": "ClusterRendering", "host": "n8"}}
}
"""

SEED_WARNING = (
    '"12080x1024" is 12080 pixels wide; more than 8192 is unusual (a typo for 1280x1024?)'
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def write_config(folder: Path, config: Any, *scripts: str) -> Path:
    """Write ``config`` (JSON text as is, anything else dumped) and empty script files."""
    for script in scripts:
        (folder / script).parent.mkdir(parents=True, exist_ok=True)
        (folder / script).write_text("")
    path = folder / "external_services.json"
    path.write_text(config if isinstance(config, str) else json.dumps(config, indent=1))
    return path


def problems_of(path: Path) -> tuple[ConfigProblem, ...]:
    with pytest.raises(ConfigError) as caught:
        load_catalog(path)
    return caught.value.problems


def one_type(**changes: Any) -> dict[str, Any]:
    """A valid session type ``"T"`` using script ``s.py``, with some keys changed or removed."""
    spec: dict[str, Any] = {"script": "s.py", "count": 1, "options": {}}
    for key, value in changes.items():
        if value is _REMOVED:
            del spec[key]
        else:
            spec[key] = value
    return {"T": spec}


def with_options(**options: Any) -> dict[str, Any]:
    return one_type(options=options)


_REMOVED = object()

_SEED_SIZE_EXAMPLE = 'must be a string WIDTHxHEIGHT such as "1600x1200", not'
_BAD_SIZE = (
    "is not a window size; write WIDTHxHEIGHT with two positive whole numbers and a lower-case "
    'x, e.g. "1600x1200"'
)
_NOT_COUNT = (
    "must be a positive whole number (the most sessions of this type that may run at once), not"
)
_NOT_SCRIPT = (
    "must be a non-empty string naming a Python file (relative to the folder of this "
    "configuration file), not"
)
_NOT_OPTIONS = (
    "must be an object (given to the script as common_options; {} when there is nothing to "
    "say), not"
)
_NOT_GROUP = (
    "must be a non-empty string naming the group whose members may use this session type "
    "(leave it out to allow everyone), not"
)
_NOT_SECONDS = "must be a number of seconds, 0 or more, not"
_NOT_BUILTIN = 'is not a built-in script; the built-in ones are: "builtin:slurm"'
_NOT_TYPE = 'must be an object with "script", "count" and "options", not'
_DUPLICATE = "given 2 times; JSON keeps only the last one and would silently drop the others"

# (config, key path, message): each config has exactly one problem.
ERROR_CASES = [
    pytest.param(
        '{"T": {"script": "s.py",\n  "count": 1 "options": {}}}',
        "",
        "is not valid JSON: Expecting ',' delimiter at line 2, column 14",
        id="not-json",
    ),
    pytest.param("", "", "is not valid JSON: Expecting value at line 1, column 1", id="empty-file"),
    pytest.param(
        "{'T': 1}",
        "",
        "is not valid JSON: Expecting property name enclosed in double quotes at line 1, column 2",
        id="single-quotes",
    ),
    pytest.param(
        [one_type()],
        "",
        "the top level must be a JSON object mapping session type names to their descriptions, "
        "not a list",
        id="top-level-list",
    ),
    pytest.param(
        "null",
        "",
        "the top level must be a JSON object mapping session type names to their descriptions, "
        "not null",
        id="top-level-null",
    ),
    pytest.param(
        {},
        "",
        'defines no session types; add at least one, e.g. {"My Session": {"script": '
        '"desktop_session.py", "count": 1, "options": {}}}',
        id="no-types",
    ),
    pytest.param(
        '{"T": {"script": "s.py", "count": 1, "options": {}},\n'
        ' "T": {"script": "s.py", "count": 2, "options": {}}}',
        '"T"',
        f"session type {_DUPLICATE}",
        id="duplicate-type",
    ),
    pytest.param(
        '{"T": {"script": "s.py", "count": 1, "options": {"sizes": ["1600x1200"], '
        '"sizes": ["800x600"]}}}',
        '"T" > options > sizes',
        f"key {_DUPLICATE}",
        id="duplicate-option",
    ),
    pytest.param({"T": "s.py"}, '"T"', f'{_NOT_TYPE} the string "s.py"', id="type-string"),
    pytest.param({"T": [1]}, '"T"', f"{_NOT_TYPE} a list", id="type-list"),
    pytest.param({"T": None}, '"T"', f"{_NOT_TYPE} null", id="type-null"),
    pytest.param(
        {"": one_type()["T"]}, '""', "a session type needs a name that is not blank", id="blank"
    ),
    pytest.param(
        one_type(script=_REMOVED),
        '"T" > script',
        "required key is missing; it names the Python file that starts and stops sessions of "
        "this type",
        id="missing-script",
    ),
    pytest.param(
        one_type(count=_REMOVED),
        '"T" > count',
        "required key is missing; it says how many sessions of this type may run at once",
        id="missing-count",
    ),
    pytest.param(
        one_type(options=_REMOVED),
        '"T" > options',
        "required key is missing; it holds the options given to the script ({} when there are "
        'none); "sizes" and "group" are read by vizgate',
        id="missing-options",
    ),
    pytest.param(one_type(script=3), '"T" > script', f"{_NOT_SCRIPT} 3", id="script-number"),
    pytest.param(
        one_type(script=""), '"T" > script', f'{_NOT_SCRIPT} the string ""', id="script-empty"
    ),
    pytest.param(
        one_type(script="  "), '"T" > script', f'{_NOT_SCRIPT} the string "  "', id="script-blank"
    ),
    pytest.param(one_type(script=None), '"T" > script', f"{_NOT_SCRIPT} null", id="script-null"),
    pytest.param(
        one_type(script=["s.py"]), '"T" > script', f"{_NOT_SCRIPT} a list", id="script-list"
    ),
    *(
        pytest.param(
            one_type(script=name),
            '"T" > script',
            f"{json.dumps(name)} {_NOT_BUILTIN}",
            id=f"script-{name}",
        )
        for name in (
            "builtin:nosuch",
            "builtin:",
            "builtin:Slurm",
            "builtin:slurm ",
            "builtin: slurm",
            "builtin:slurm.py",
            "builtin:../s.py",
        )
    ),
    pytest.param(one_type(count=True), '"T" > count', f"{_NOT_COUNT} true", id="count-true"),
    pytest.param(one_type(count=False), '"T" > count', f"{_NOT_COUNT} false", id="count-false"),
    pytest.param(one_type(count=2.5), '"T" > count', f"{_NOT_COUNT} 2.5", id="count-float"),
    pytest.param(one_type(count=2.0), '"T" > count', f"{_NOT_COUNT} 2.0", id="count-whole-float"),
    pytest.param(
        one_type(count="2"), '"T" > count', f'{_NOT_COUNT} the string "2"', id="count-string"
    ),
    pytest.param(one_type(count=0), '"T" > count', f"{_NOT_COUNT} 0", id="count-zero"),
    pytest.param(one_type(count=-1), '"T" > count', f"{_NOT_COUNT} -1", id="count-negative"),
    pytest.param(one_type(count=None), '"T" > count', f"{_NOT_COUNT} null", id="count-null"),
    pytest.param(
        one_type(options=[]), '"T" > options', f"{_NOT_OPTIONS} an empty list", id="options-list"
    ),
    pytest.param(
        one_type(options="sizes"),
        '"T" > options',
        f'{_NOT_OPTIONS} the string "sizes"',
        id="options-string",
    ),
    pytest.param(
        one_type(options=None), '"T" > options', f"{_NOT_OPTIONS} null", id="options-null"
    ),
    pytest.param(
        with_options(sizes="1600x1200"),
        '"T" > options > sizes',
        'must be a list of window sizes such as ["1600x1200", "1920x1080"], not the string '
        '"1600x1200"',
        id="sizes-string",
    ),
    pytest.param(
        with_options(sizes={"1600x1200": True}),
        '"T" > options > sizes',
        'must be a list of window sizes such as ["1600x1200", "1920x1080"], not an object',
        id="sizes-object",
    ),
    pytest.param(
        with_options(sizes=[]),
        '"T" > options > sizes',
        "must list at least one window size; leave it out to offer the defaults (1024x768, "
        "1280x1024, 1600x1200, 1920x1080)",
        id="sizes-empty",
    ),
    pytest.param(
        with_options(sizes=["1600x1200", 1600]),
        '"T" > options > sizes[1]',
        f"{_SEED_SIZE_EXAMPLE} 1600",
        id="size-number",
    ),
    pytest.param(
        with_options(sizes=[None]),
        '"T" > options > sizes[0]',
        f"{_SEED_SIZE_EXAMPLE} null",
        id="size-null",
    ),
    pytest.param(
        with_options(sizes=[[1600, 1200]]),
        '"T" > options > sizes[0]',
        f"{_SEED_SIZE_EXAMPLE} a list",
        id="size-list",
    ),
    *(
        pytest.param(
            with_options(sizes=["800x600", bad]),
            '"T" > options > sizes[1]',
            f"{json.dumps(bad)} {_BAD_SIZE}",
            id=f"size-{bad}",
        )
        for bad in (
            "1600*1200",
            "0x768",
            "1024x0",
            "1600X1200",
            "1600x",
            "x1200",
            " 1600x1200",
            "01600x1200",
            "1600x1200x24",
            "-1600x1200",
            "1600.5x1200",
            "",
        )
    ),
    pytest.param(
        with_options(group=""),
        '"T" > options > group',
        f'{_NOT_GROUP} the string ""',
        id="group-empty",
    ),
    pytest.param(
        with_options(group=" "),
        '"T" > options > group',
        f'{_NOT_GROUP} the string " "',
        id="group-blank",
    ),
    pytest.param(
        with_options(group=3), '"T" > options > group', f"{_NOT_GROUP} 3", id="group-number"
    ),
    pytest.param(
        with_options(group=None), '"T" > options > group', f"{_NOT_GROUP} null", id="group-null"
    ),
    pytest.param(
        with_options(group=["a"]), '"T" > options > group', f"{_NOT_GROUP} a list", id="group-list"
    ),
    pytest.param(
        with_options(file_ext=".evsn"),
        '"T" > options > file_ext',
        'must be a list of file extensions such as [".evsn"], not the string ".evsn"',
        id="file-ext-string",
    ),
    pytest.param(
        with_options(file_ext={}),
        '"T" > options > file_ext',
        'must be a list of file extensions such as [".evsn"], not an object',
        id="file-ext-object",
    ),
    pytest.param(
        with_options(file_ext=[".evsn", 3]),
        '"T" > options > file_ext[1]',
        "must be a non-empty string, not 3",
        id="file-ext-number",
    ),
    pytest.param(
        with_options(file_ext=[""]),
        '"T" > options > file_ext[0]',
        'must be a non-empty string, not the string ""',
        id="file-ext-empty-string",
    ),
    *(
        pytest.param(
            with_options(max_per_user=value),
            '"T" > options > max_per_user',
            "must be a positive whole number (the most sessions of this type one user may have "
            f"at once; leave it out for no limit), not {shown}",
            id=f"max-per-user-{shown}",
        )
        for value, shown in (
            (0, "0"),
            (-1, "-1"),
            (1.5, "1.5"),
            (True, "true"),
            ("2", 'the string "2"'),
        )
    ),
    *(
        pytest.param(
            with_options(**{key: value}),
            f'"T" > options > {key}',
            f"{_NOT_SECONDS} {shown}",
            id=f"{key}-{shown}",
        )
        for key in ("idle_timeout", "max_lifetime", "start_timeout", "linger")
        for value, shown in (
            (-1, "-1"),
            (-0.5, "-0.5"),
            (True, "true"),
            ("60", 'the string "60"'),
            (None, "null"),
            ([60], "a list"),
        )
    ),
    pytest.param(
        '{"T": {"script": "s.py", "count": 1, "options": {"idle_timeout": NaN}}}',
        '"T" > options > idle_timeout',
        f"{_NOT_SECONDS} NaN",
        id="idle_timeout-NaN",
    ),
    pytest.param(
        '{"T": {"script": "s.py", "count": 1, "options": {"max_lifetime": Infinity}}}',
        '"T" > options > max_lifetime',
        f"{_NOT_SECONDS} Infinity",
        id="max_lifetime-Infinity",
    ),
]


@pytest.mark.parametrize(("config", "key_path", "message"), ERROR_CASES)
def test_each_problem_has_one_clear_message(
    tmp_path: Path, config: Any, key_path: str, message: str
) -> None:
    path = write_config(tmp_path, config, "s.py")
    assert problems_of(path) == (ConfigProblem(str(path), key_path, message),)


def test_problem_text_names_file_key_path_and_reason(tmp_path: Path) -> None:
    path = write_config(tmp_path, with_options(sizes=["800x600", "1600*1200"]), "s.py")
    with pytest.raises(ConfigError) as caught:
        load_catalog(path)
    assert str(caught.value) == f'{path}: "T" > options > sizes[1]: "1600*1200" {_BAD_SIZE}'
    assert caught.value.file == str(path)
    assert caught.value.key_path == '"T" > options > sizes[1]'


def test_missing_script_file_names_the_resolved_path(tmp_path: Path) -> None:
    (tmp_path / "scripts").mkdir()
    path = write_config(tmp_path, one_type(script="scripts/../scripts/missing.py"))
    looked_at = tmp_path.resolve() / "scripts" / "missing.py"
    assert problems_of(path) == (
        ConfigProblem(str(path), '"T" > script', f"script file not found: looked for {looked_at}"),
    )


def test_script_that_is_a_folder_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "folder.py").mkdir()
    path = write_config(tmp_path, one_type(script="folder.py"))
    folder = (tmp_path / "folder.py").resolve()
    assert problems_of(path) == (
        ConfigProblem(str(path), '"T" > script', f"{folder} is not a file"),
    )


def test_script_path_with_nul_byte_is_an_error_not_a_crash(tmp_path: Path) -> None:
    path = write_config(tmp_path, one_type(script="s\u0000.py"))
    (problem,) = problems_of(path)
    assert problem.key_path == '"T" > script'
    assert problem.message.startswith('"s\\u0000.py" is not a usable path: ')


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        pytest.param("[" * 100_000 + "]" * 100_000, "it is nested too deeply", id="deep"),
        pytest.param('{"T": ' + "9" * 5000 + "}", "Exceeds the limit", id="huge-integer"),
    ],
)
def test_json_python_cannot_hold_is_an_error_not_a_crash(
    tmp_path: Path, text: str, reason: str
) -> None:
    (problem,) = problems_of(write_config(tmp_path, text))
    assert problem.key_path == ""
    assert problem.message.startswith("is not usable JSON: ")
    assert reason in problem.message


def test_every_missing_key_is_its_own_problem(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"T": {}})
    assert [(p.key_path, p.message.split(";")[0]) for p in problems_of(path)] == [
        ('"T" > script', "required key is missing"),
        ('"T" > count', "required key is missing"),
        ('"T" > options', "required key is missing"),
    ]


def test_every_problem_of_every_type_is_reported_in_file_order(tmp_path: Path) -> None:
    config = {
        "A": {"script": "s.py", "count": 0, "options": {"sizes": ["1x1", "big", 7]}},
        "Good": {"script": "s.py", "count": 1, "options": {}},
        "B": {"script": "missing.py", "count": "3", "options": {"group": "", "linger": -2}},
        "C": 5,
    }
    path = write_config(tmp_path, config, "s.py")
    assert [p.key_path for p in problems_of(path)] == [
        '"A" > count',
        '"A" > options > sizes[1]',
        '"A" > options > sizes[2]',
        '"B" > script',
        '"B" > count',
        '"B" > options > group',
        '"B" > options > linger',
        '"C"',
    ]


def test_duplicate_types_are_reported_with_the_other_problems(tmp_path: Path) -> None:
    text = (
        '{"T": {"script": "s.py", "count": 1, "options": {}},\n'
        ' "U": {"script": "s.py", "count": 0, "options": {}},\n'
        ' "T": {"script": "s.py", "count": 1, "options": {}},\n'
        ' "T": {"script": "s.py", "count": 1, "options": {}}}'
    )
    path = write_config(tmp_path, text, "s.py")
    assert [(p.key_path, p.message[:30]) for p in problems_of(path)] == [
        ('"T"', "session type given 3 times; JS"),
        ('"U" > count', "must be a positive whole numbe"),
    ]


def test_duplicate_keys_deep_inside_free_form_options_are_errors(tmp_path: Path) -> None:
    text = '{"T": {"script": "s.py", "count": 1, "options": {"env": [{"A": 1, "A": 2}]}}}'
    path = write_config(tmp_path, text, "s.py")
    assert problems_of(path) == (
        ConfigProblem(str(path), '"T" > options > env[0] > A', f"key {_DUPLICATE}"),
    )


# --- warnings --------------------------------------------------------------------------------

WARNING_CASES = [
    pytest.param(
        with_options(sizes=["12080x1024"]),
        '"T" > options > sizes[0]',
        SEED_WARNING,
        id="seed-wide",
    ),
    pytest.param(
        with_options(sizes=["800x600", "1920x10800"]),
        '"T" > options > sizes[1]',
        '"1920x10800" is 10800 pixels tall; more than 8192 is unusual (a typo for 1920x1080?)',
        id="tall",
    ),
    pytest.param(
        with_options(sizes=["9000x9000"]),
        '"T" > options > sizes[0]',
        '"9000x9000" is 9000 pixels wide and 9000 pixels tall; more than 8192 is unusual',
        id="wide-and-tall-no-hint",
    ),
    pytest.param(
        with_options(sizes=["1600x1200", "1600x1200"]),
        '"T" > options > sizes[1]',
        '"1600x1200" is listed more than once',
        id="repeated-size",
    ),
    pytest.param(
        one_type(counts=2),
        '"T" > counts',
        'unknown key (did you mean "count"?); a session type has only "script", "count" and '
        '"options", so it is ignored',
        id="unknown-key-close",
    ),
    pytest.param(
        one_type(description="Software rendering"),
        '"T" > description',
        'unknown key; a session type has only "script", "count" and "options", so it is ignored',
        id="unknown-key",
    ),
    pytest.param(
        {"A/B": one_type()["T"]},
        '"A/B"',
        'contains "/", which clients cannot use in /v1/reserve/{servicename} URLs',
        id="slash-in-name",
    ),
]


@pytest.mark.parametrize(("config", "key_path", "message"), WARNING_CASES)
def test_each_warning_has_one_clear_message(
    tmp_path: Path, config: Any, key_path: str, message: str
) -> None:
    path = write_config(tmp_path, config, "s.py")
    catalog = load_catalog(path)
    assert catalog.warnings == (ConfigProblem(str(path), key_path, message),)


def test_exactly_max_sane_dimension_is_no_warning(tmp_path: Path) -> None:
    size = f"{MAX_SANE_DIMENSION}x{MAX_SANE_DIMENSION}"
    path = write_config(tmp_path, with_options(sizes=[size]), "s.py")
    assert load_catalog(path).warnings == ()


# --- the seed's configuration ---------------------------------------------------------------


def test_seed_config_parses_with_exactly_one_size_warning(tmp_path: Path) -> None:
    path = write_config(tmp_path, SEED_CONFIG, "desktop_session.py", "x11vnc_desktop_session.py")
    catalog = load_catalog(path)

    assert catalog.path == path
    assert [service.name for service in catalog] == [
        "Local Software Session",
        "Cluster Node Session",
    ]
    local = catalog["Local Software Session"]
    assert local.script == tmp_path.resolve() / "desktop_session.py"
    assert local.script.is_absolute()
    assert local.count == 2
    assert local.sizes == ("12080x1024", "1600x1200")
    assert local.group is None
    assert local.file_ext == ()
    assert local.options_dict() == {"sizes": ["12080x1024", "1600x1200"], "display_base": 100}

    cluster = catalog["Cluster Node Session"]
    assert cluster.script == tmp_path.resolve() / "x11vnc_desktop_session.py"
    assert cluster.count == 1
    assert cluster.sizes == ("1600x1200",)
    assert cluster.group == "ClusterRendering"
    assert cluster.options["host"] == "n8"

    assert catalog.warnings == (
        ConfigProblem(str(path), '"Local Software Session" > options > sizes[0]', SEED_WARNING),
    )
    assert catalog.instance_count == 3


@pytest.mark.parametrize("name", ["external_services.seed.json", "external_services.json"])
def test_examples_config_parses_with_exactly_one_size_warning(name: str) -> None:
    catalog = load_catalog(EXAMPLES / name)
    assert [(s.name, s.count, s.sizes, s.group) for s in catalog] == [
        ("Local Software Session", 2, ("12080x1024", "1600x1200"), None),
        ("Cluster Node Session", 1, ("1600x1200",), "ClusterRendering"),
    ]
    assert [(w.key_path, w.message) for w in catalog.warnings] == [
        ('"Local Software Session" > options > sizes[0]', SEED_WARNING)
    ]


# --- what a valid catalog holds --------------------------------------------------------------


def test_defaults_when_options_are_empty(tmp_path: Path) -> None:
    service = load_catalog(write_config(tmp_path, one_type(), "s.py"))["T"]
    assert service.sizes == DEFAULT_SIZES
    assert service.group is None
    assert service.file_ext == ()
    assert service.options_dict() == {}


def test_sizes_group_file_ext_and_timeouts_are_read(tmp_path: Path) -> None:
    options = {
        "sizes": ["1920x1080", "800x600"],
        "group": "Render",
        "file_ext": [".evsn", ".csf"],
        "idle_timeout": 0,
        "max_lifetime": 3600.5,
        "start_timeout": 30,
        "linger": 2.5,
    }
    service = load_catalog(write_config(tmp_path, with_options(**options), "s.py"))["T"]
    assert service.sizes == ("1920x1080", "800x600")
    assert service.group == "Render"
    assert service.file_ext == (".evsn", ".csf")
    assert service.options_dict() == options


def test_types_keep_file_order(tmp_path: Path) -> None:
    names = ["zeta", "Alpha", "mid dle", "Ä unicode"]
    config = {name: one_type()["T"] for name in names}
    catalog = load_catalog(write_config(tmp_path, config, "s.py"))
    assert [service.name for service in catalog] == names
    assert list(catalog.types) == names


def test_unknown_option_keys_pass_through_untouched(tmp_path: Path) -> None:
    options = {
        "display_base": 100,
        "host": "n8",
        "nested": {"list": [1, {"deep": None}], "flag": False},
        "ratio": 0.25,
    }
    service = load_catalog(write_config(tmp_path, with_options(**options), "s.py"))["T"]
    assert service.options_dict() == options
    assert json.dumps(service.options_dict()) == json.dumps(options)


def test_script_is_resolved_from_the_config_folder_not_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    path = write_config(site, one_type(script="bin/session.py"), "bin/session.py")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    catalog = load_catalog(Path("..") / "site" / "external_services.json")
    assert catalog.path == path
    assert catalog["T"].script == site.resolve() / "bin" / "session.py"


def test_absolute_script_path_is_used_as_is(tmp_path: Path) -> None:
    script = tmp_path / "abs" / "session.py"
    script.parent.mkdir()
    script.write_text("")
    site = tmp_path / "site"
    site.mkdir()
    catalog = load_catalog(write_config(site, one_type(script=str(script))))
    assert catalog["T"].script == script.resolve()


@pytest.mark.parametrize(
    ("script", "launcher"),
    [pytest.param("builtin:slurm", "slurm.py", id="slurm")],
)
def test_builtin_script_is_the_launcher_shipped_with_vizgate(
    tmp_path: Path, script: str, launcher: str
) -> None:
    import vizgate.launchers

    # No file of that name beside the configuration: the package's launcher is used.
    catalog = load_catalog(write_config(tmp_path, one_type(script=script)))
    expected = Path(vizgate.launchers.__file__).resolve().parent / launcher
    assert catalog["T"].script == expected
    assert expected.is_file()


def test_builtin_prefix_is_not_looked_up_as_a_file(tmp_path: Path) -> None:
    # A file that happens to carry the name does not make an unknown built-in valid.
    (tmp_path / "builtin:nosuch").write_text("")
    assert problems_of(write_config(tmp_path, one_type(script="builtin:nosuch"))) == (
        ConfigProblem(
            str(tmp_path / "external_services.json"),
            '"T" > script',
            f'"builtin:nosuch" {_NOT_BUILTIN}',
        ),
    )


def test_parse_catalog_names_the_path_it_is_given(tmp_path: Path) -> None:
    (tmp_path / "s.py").write_text("")
    config_path = tmp_path / "conf.json"
    catalog = parse_catalog(json.dumps(one_type()), config_path)
    assert catalog["T"].script == tmp_path.resolve() / "s.py"
    with pytest.raises(ConfigError) as caught:
        parse_catalog("[]", Path("relative/conf.json"))
    assert caught.value.problems[0].file == "relative/conf.json"


# --- immutability ----------------------------------------------------------------------------


def test_options_are_read_only_all_the_way_down(tmp_path: Path) -> None:
    options = {"sizes": ["800x600"], "nested": {"list": [1, 2]}}
    service = load_catalog(write_config(tmp_path, with_options(**options), "s.py"))["T"]
    with pytest.raises(TypeError):
        service.options["host"] = "n9"  # type: ignore[index]
    with pytest.raises(TypeError):
        service.options["nested"]["list"] = []
    with pytest.raises(AttributeError):
        service.options["sizes"].append("1024x768")
    with pytest.raises(dataclasses.FrozenInstanceError):
        service.count = 5  # type: ignore[misc]
    assert service.options_dict() == options


def test_options_dict_is_a_fresh_mutable_deep_copy(tmp_path: Path) -> None:
    options = {"sizes": ["800x600"], "nested": {"list": [1, 2]}}
    service = load_catalog(write_config(tmp_path, with_options(**options), "s.py"))["T"]
    first = service.options_dict()
    first["nested"]["list"].append(3)
    first["sizes"].append("1024x768")
    first["new"] = True
    second = service.options_dict()
    assert second == options
    assert second is not first
    assert type(second["sizes"]) is list
    assert type(second["nested"]) is dict


def test_service_type_built_by_hand_copies_what_it_is_given(tmp_path: Path) -> None:
    options: dict[str, Any] = {"display_base": 100, "sizes": ["800x600"]}
    service = ServiceType(
        name="T",
        script=tmp_path / "s.py",
        count=1,
        options=options,
        sizes=["800x600"],  # type: ignore[arg-type]
        group=None,
        file_ext=(),
    )
    options["display_base"] = 200
    options["sizes"].append("1x1")
    assert service.options_dict() == {"display_base": 100, "sizes": ["800x600"]}
    assert service.sizes == ("800x600",)
    assert hash(service) == hash(dataclasses.replace(service))
    assert service == dataclasses.replace(service)


def test_catalog_is_a_read_only_lookup(tmp_path: Path) -> None:
    config = {"A": one_type()["T"], "B": one_type(count=3)["T"]}
    catalog = load_catalog(write_config(tmp_path, config, "s.py"))
    assert isinstance(catalog, Catalog)
    assert len(catalog) == 2
    assert "A" in catalog
    assert "C" not in catalog
    assert 3 not in catalog
    assert catalog["B"].count == 3
    assert catalog.get("B") is catalog["B"]
    assert catalog.get("C") is None
    with pytest.raises(KeyError):
        catalog["C"]
    with pytest.raises(TypeError):
        catalog.types["C"] = catalog["A"]  # type: ignore[index]
    assert [service.name for service in catalog] == ["A", "B"]
    assert catalog.instance_count == 4


# --- reading files ---------------------------------------------------------------------------


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.json"
    assert problems_of(path) == (ConfigProblem(str(path), "", "no such file"),)


def test_folder_instead_of_file_is_a_config_error(tmp_path: Path) -> None:
    assert problems_of(tmp_path) == (
        ConfigProblem(str(tmp_path), "", "is a directory, not a configuration file"),
    )


def test_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.json"
    path.write_bytes('{"Séance": 1}'.encode("latin-1"))
    assert problems_of(path) == (
        ConfigProblem(str(path), "", "is not UTF-8 text (byte 3 is invalid)"),
    )


def test_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = write_config(tmp_path, "", "s.py")
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(one_type()).encode())
    assert list(load_catalog(path).types) == ["T"]


# --- parse_size ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "expected"),
    [("1600x1200", (1600, 1200)), ("1x1", (1, 1)), ("12080x1024", (12080, 1024))],
)
def test_parse_size(size: str, expected: tuple[int, int]) -> None:
    assert parse_size(size) == expected


@pytest.mark.parametrize(
    "size",
    [
        "1600*1200",
        "0x768",
        "768x0",
        "1600X1200",
        "1600 x 1200",
        "1600x1200 ",
        "x",
        "",
        "1600",
        "+1600x1200",
        "1600x-1",
        "1e3x768",
        "\u0661\u0666\u0660\u0660x\u0661\u0662\u0660\u0660",
    ],
)
def test_parse_size_rejects(size: str) -> None:
    with pytest.raises(ValueError, match="is not a window size; write WIDTHxHEIGHT"):
        parse_size(size)


def test_parse_size_rejects_non_strings() -> None:
    with pytest.raises(ValueError, match="is not a window size"):
        parse_size(1600)  # type: ignore[arg-type]


@given(st.integers(1, 10**6), st.integers(1, 10**6))
def test_parse_size_round_trips(width: int, height: int) -> None:
    assert parse_size(f"{width}x{height}") == (width, height)


@given(st.text(alphabet="0123456789xX*- ", max_size=12))
def test_parse_size_accepts_only_what_it_can_print_back(text: str) -> None:
    try:
        width, height = parse_size(text)
    except ValueError:
        return
    assert f"{width}x{height}" == text
