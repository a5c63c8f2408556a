"""Every check of a caller's request (pure: no I/O). A request is refused, never cleaned.

The name patterns repeat opus_paas/names.py on purpose: this side trusts nothing from
that side, not even its code.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import PurePosixPath
from typing import Any

from secureops.layout import Denied, Layout

APP = re.compile(r"[a-z](?:[a-z0-9-]{0,28}[a-z0-9])?")
PROCESS_TYPE = re.compile(r"[A-Za-z0-9._-]{1,63}")
ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
RESERVED = frozenset({"opus", "www", "git", "ssh", "front", "supervisor"})
# What a child's environment may never carry: the loader's and the interpreter's hooks.
FORBIDDEN_ENV = re.compile(r"LD_.*|PYTHONHOME|PYTHONSTARTUP|PYTHONINSPECT|BASH_ENV|ENV|"
                           r"PERL5OPT|PERL5LIB|RUBYOPT|NODE_OPTIONS|GCONV_PATH|IFS")
SIGNALS = frozenset({"TERM", "INT", "QUIT", "HUP", "KILL", "USR1", "USR2"})
# An interpreter Opus fetched, named as uv names its installations
# (cpython-3.13.0-linux-x86_64-gnu), and the wheelhouse directory of one interpreter.
PYTHON_NAME = re.compile(r"cpython-3\.[0-9]{1,2}\.[0-9]{1,3}(?:(?:a|b|rc)[0-9]{1,2})?"
                         r"(?:\+[a-z]{1,16})?-linux-[a-z0-9_]{1,16}-[a-z]{3,12}")
WHEELHOUSE_KEY = re.compile(r"cp3[0-9]{1,2}-[0-9a-f]{16}")
WHEEL_FILE = re.compile(r"[A-Za-z0-9_]{1,64}-[A-Za-z0-9_.!+]{1,64}(?:-[0-9][A-Za-z0-9_]*)?"
                        r"-[A-Za-z0-9_.]{1,64}-[A-Za-z0-9_.]{1,64}-[A-Za-z0-9_.]{1,128}\.whl")
MAX_ARG = 8192
MAX_VALUE = 32 * 1024     # a config var passed to a step (a PEM key, say)
MAX_ARGS = 256
MAX_PROGRAMS = 32
PROCESS_NUM = "%(process_num)d"


def app_name(name: str) -> str:
    if not APP.fullmatch(name) or name in RESERVED:
        raise Denied(f"invalid app name {name!r}")
    return name


def _text(value: Any, what: str, limit: int = MAX_ARG, *, lines: bool = False) -> str:
    """A string: one line (or, with `lines`, any text without NUL: a value passed to
    exec, never written into a config), at most `limit` characters."""
    forbidden = "\0" if lines else "\0\n\r"
    if not isinstance(value, str) or len(value) > limit or any(c in value for c in forbidden):
        kind = "text without NUL" if lines else "one line of text"
        raise Denied(f"{what} must be {kind} of at most {limit} characters")
    return value


def _number(value: Any, what: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise Denied(f"{what} must be a whole number from {low} to {high}")
    return value


def _exactly(spec: Any, required: set[str], optional: set[str], what: str) -> dict[str, Any]:
    if not isinstance(spec, dict):
        raise Denied(f"{what} must be a JSON object")
    keys = set(spec)
    if not required <= keys or not keys <= required | optional:
        unknown = sorted(keys - required - optional)
        missing = sorted(required - keys)
        raise Denied(f"{what}: unknown keys {unknown}, missing keys {missing}")
    return spec


def inside(layout: Layout, app: str, path: Any, under: str, what: str) -> PurePosixPath:
    """`path` as given, if it is absolute, has no '..' and lies lexically inside the
    app's `under` directory (symlinks are the running app's own business: it runs as the
    app's user)."""
    text = _text(path, what)
    found = PurePosixPath(text)
    top = PurePosixPath(layout.app_dir(app)) / under
    if not found.is_absolute() or ".." in found.parts or not found.is_relative_to(top) or \
            found == top:
        raise Denied(f"{what} {text!r} is not inside the app's {under}/")
    return found


def environment(value: Any, what: str, *, lines: bool = False) -> dict[str, str]:
    if not isinstance(value, dict) or len(value) > 256:
        raise Denied(f"{what} must be an object of at most 256 variables")
    for key, item in value.items():
        if not isinstance(key, str) or not ENV_KEY.fullmatch(key) or FORBIDDEN_ENV.fullmatch(key):
            raise Denied(f"{what}: variable {key!r} is not allowed")
        _text(item, f"{what}: {key}", MAX_VALUE if lines else MAX_ARG, lines=lines)
    return dict(value)


def argv(value: Any, what: str, *, lines: bool = False) -> list[str]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_ARGS:
        raise Denied(f"{what} must be a list of 1 to {MAX_ARGS} arguments")
    return [_text(a, f"{what} argument", lines=lines) for a in value]


@dataclasses.dataclass(frozen=True)
class ProgramSpec:
    """One supervisor program of an app, as secureops will render it."""

    name: str
    command: list[str]
    directory: PurePosixPath
    log_name: str
    environment: dict[str, str]
    numprocs: int
    stopsignal: str
    stopwaitsecs: int
    startsecs: int


PROGRAM_KEYS = {"name", "command", "directory", "log_name"}
PROGRAM_OPTIONAL = {"environment", "numprocs", "stopsignal", "stopwaitsecs", "startsecs"}


def programs(layout: Layout, app: str, spec: Any) -> list[ProgramSpec]:
    """The programs in `spec` ({"programs": [...]}) for `app`, each checked: its name is
    the app's, its command runs from the app's releases, its log goes to the app's logs;
    there is no `user` to give (secureops sets it)."""
    body = _exactly(spec, {"programs"}, set(), "the spec")
    items = body["programs"]
    if not isinstance(items, list) or len(items) > MAX_PROGRAMS:
        raise Denied(f"programs must be a list of at most {MAX_PROGRAMS}")
    found = []
    for item in items:
        entry = _exactly(item, PROGRAM_KEYS, PROGRAM_OPTIONAL, "a program")
        name = _text(entry["name"], "a program's name", 100)
        web = re.fullmatch(rf"{re.escape(app)}-web-v[0-9]{{1,9}}-p[0-9]{{1,5}}", name)
        kind = name.partition(".")[2] if name.startswith(app + ".") else ""
        if not web and not PROCESS_TYPE.fullmatch(kind):
            raise Denied(f"program {name!r} is not one of {app}'s")
        numprocs = _number(entry.get("numprocs", 0), "numprocs", 0, 16)
        command = argv(entry["command"], "command")
        inside(layout, app, command[0], "releases", "the command")
        log_name = _text(entry["log_name"], "log_name", 100)
        plain = re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,70}\.log", log_name)
        numbered = numprocs and log_name == f"{kind}.{PROCESS_NUM}.log"
        if not plain and not numbered:
            raise Denied(f"log_name {log_name!r} is not a plain log file name")
        signal = entry.get("stopsignal", "TERM")
        if signal not in SIGNALS:
            raise Denied(f"stopsignal {signal!r} is not one of {sorted(SIGNALS)}")
        found.append(ProgramSpec(
            name=name, command=command,
            directory=inside(layout, app, entry["directory"], "releases", "the directory"),
            log_name=log_name,
            environment=environment(entry.get("environment", {}), "environment"),
            numprocs=numprocs, stopsignal=signal,
            stopwaitsecs=_number(entry.get("stopwaitsecs", 10), "stopwaitsecs", 1, 300),
            startsecs=_number(entry.get("startsecs", 1), "startsecs", 0, 60),
        ))
    names = [p.name for p in found]
    if len(set(names)) != len(names):
        raise Denied("two programs have the same name")
    return found


def release(spec: Any) -> int:
    """The release version in {"version": N}."""
    body = _exactly(spec, {"version"}, set(), "the spec")
    return _number(body["version"], "version", 1, 999_999_999)


def static_release(spec: Any) -> tuple[int, bool]:
    """The release version in {"version": N, "live": true|false}, and whether the front
    is to serve its static files from now on."""
    body = _exactly(spec, {"version", "live"}, set(), "the spec")
    if not isinstance(body["live"], bool):
        raise Denied("live must be true or false")
    return _number(body["version"], "version", 1, 999_999_999), body["live"]


@dataclasses.dataclass(frozen=True)
class RunSpec:
    argv: list[str]
    cwd: PurePosixPath
    env: dict[str, str]
    terminal: tuple[int, int] | None = None    # (rows, columns) of its pseudo-terminal


def run(layout: Layout, app: str, spec: Any, *, terminal: bool = False) -> RunSpec:
    """A step to run as the app's user: a command by absolute path, in a directory
    inside the app's tree, with exactly the environment given (checked); on a terminal,
    its size too."""
    size = {"rows", "columns"} if terminal else set()
    body = _exactly(spec, {"argv", "cwd", "env"} | size, set(), "the spec")
    # A step is exec'd, never written into a config: its arguments and variables may
    # span lines (`python -c` code, a multi-line config var).
    command = argv(body["argv"], "argv", lines=True)
    if not command[0].startswith("/") or ".." in PurePosixPath(command[0]).parts:
        raise Denied("argv[0] must be an absolute path without '..'")
    rows_columns = (_number(body["rows"], "rows", 1, 9999),
                    _number(body["columns"], "columns", 1, 9999)) if terminal else None
    return RunSpec(command, inside(layout, app, body["cwd"], "", "cwd"),
                   environment(body["env"], "env", lines=True), rows_columns)


def _one_name(spec: Any, field: str, pattern: re.Pattern[str], what: str) -> str:
    """The value of {FIELD: VALUE}, if `pattern` matches it whole."""
    body = _exactly(spec, {field}, set(), "the spec")
    value = _text(body[field], field, 100)
    if not pattern.fullmatch(value):
        raise Denied(f"{value!r} is not {what}")
    return value


def python_name(spec: Any) -> str:
    """The interpreter named in {"name": NAME}."""
    return _one_name(spec, "name", PYTHON_NAME,
                     "an interpreter's name (cpython-3.X.Y-linux-ARCH-LIBC)")


def wheelhouse_key(spec: Any) -> str:
    """The wheelhouse directory named in {"key": KEY}."""
    return _one_name(spec, "key", WHEELHOUSE_KEY, "a wheelhouse key (cp3XY- and 16 hex digits)")
