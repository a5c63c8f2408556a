"""`secureops VERB APP` (a spec, if the verb takes one, on standard input).

Exit status: the verb's (0: done; a step's own status for `run`), 77 when refused, 70
when it failed. The environment is cleared first; the config comes from its fixed
root-owned place (`--config PATH` only when root itself calls, not through sudo, doas
or pkexec, as the tests do).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from secureops import audit, checks, static, tools, verbs
from secureops.layout import DEFAULT_CONFIG, Denied, Layout, load

MAX_SPEC = 1 << 20     # a step's environment carries the app's config
DENIED = 77        # EX_NOPERM: distinct from any status a step is likely to give
FAILED = 70        # EX_SOFTWARE
ELEVATORS = ("SUDO_UID", "DOAS_USER", "PKEXEC_UID")
TABLE = {**verbs.TABLE, **tools.TABLE, **static.TABLE}


def caller() -> str:
    """Who asked: sudo's record of the invoking user, else our own uid."""
    sudo = os.environ.get("SUDO_UID", "")
    return f"uid {sudo}" if sudo.isdigit() else f"uid {os.getuid()}"


def main(argv: list[str], stdin: Any = None) -> int:
    who = caller()
    elevated = any(name in os.environ for name in ELEVATORS)
    os.environ.clear()                       # nothing of the caller's reaches a child
    os.umask(0o077)
    config = DEFAULT_CONFIG
    if argv[:1] == ["--config"] and len(argv) >= 2:
        if elevated or os.getuid() != 0 or os.geteuid() != 0:
            print("secureops: --config is for root itself only", file=sys.stderr)
            return DENIED
        config, argv = Path(argv[1]), argv[2:]
    try:
        layout = load(config, must_be_root_owned=os.geteuid() == 0)
    except Denied as exc:
        print(f"secureops: {exc}", file=sys.stderr)
        return DENIED
    return handle(layout, argv, stdin if stdin is not None else sys.stdin, who,
                  same_user=False)


def handle(layout: Layout, argv: list[str], stdin: Any, who: str, *, same_user: bool) -> int:
    """Check and do one request; every outcome is logged, a refusal or failure said on
    standard error."""
    status, message = request(layout, argv, stdin, who, same_user=same_user)
    if message:
        print(message, file=sys.stderr)
    return status


def request(layout: Layout, argv: list[str], stdin: Any, who: str, *,
            same_user: bool) -> tuple[int, str]:
    """Check and do one request: (exit status, what to say: why it was not done, or
    the verb's notes when it was)."""
    verb = argv[0] if argv else ""
    app = argv[1] if len(argv) > 1 else ""
    try:
        entry = TABLE.get(verb)
        if entry is None or len(argv) != 1 + entry.takes_app:
            raise Denied(f"usage: secureops VERB APP (front-install, python-*, wheels-*: no "
                         f"APP), VERB one of {', '.join(TABLE)}")
        if entry.takes_app:
            checks.app_name(app)
        spec = None
        if entry.takes_spec:
            spec = _read_spec_line(stdin) if entry.spec_line else _read_spec(stdin)
        audit.record(layout.log, who, verb, app, "allow")   # unlogged: not done
        done = verbs.Request(layout, app, spec, same_user)
        status = entry.run(done)
    except Denied as exc:
        _record_quietly(layout, who, verb, app, "deny", str(exc))
        return DENIED, f"secureops: refused: {exc}"
    except audit.Unlogged as exc:
        return DENIED, f"secureops: refused: {exc}"
    except Exception as exc:   # fail closed, and say what failed
        _record_quietly(layout, who, verb, app, "error", f"{type(exc).__name__}: {exc}")
        return FAILED, f"secureops: {verb} {app} failed: {type(exc).__name__}"
    return status, "\n".join(done.notes)


def _record_quietly(layout: Layout, who: str, verb: str, app: str, outcome: str,
                    reason: str) -> None:
    """A refusal or failure stands whether or not the log takes it."""
    with contextlib.suppress(audit.Unlogged):
        audit.record(layout.log, who, verb, app, outcome, reason)


def _read_spec(stdin: Any) -> Any:
    raw = stdin.read(MAX_SPEC + 1)
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    if len(raw) > MAX_SPEC:
        raise Denied(f"the spec is larger than {MAX_SPEC} bytes")
    return _parse_spec(raw)


def _read_spec_line(stdin: Any) -> Any:
    """The spec on the first line of standard input, read a byte at a time from its
    descriptor: what follows (keystrokes) stays unread, for the step."""
    try:
        fd = stdin.fileno()
    except (AttributeError, OSError, ValueError):       # in-process: a text stream
        line = stdin.readline(MAX_SPEC + 1)
        if len(line) > MAX_SPEC:
            raise Denied(f"the spec is larger than {MAX_SPEC} bytes") from None
        return _parse_spec(line)
    raw = bytearray()
    while not raw.endswith(b"\n"):
        byte = os.read(fd, 1)
        if not byte:
            break
        raw += byte
        if len(raw) > MAX_SPEC:
            raise Denied(f"the spec is larger than {MAX_SPEC} bytes")
    return _parse_spec(raw.decode("utf-8", "replace"))


def _parse_spec(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        raise Denied("the spec is not JSON") from None
