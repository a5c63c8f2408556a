"""Which processes an earlier run of an Opus home left (pure): its marker, or its
supervisord's config, and never the caller's own line of ancestors."""

from __future__ import annotations

import os
from pathlib import Path

from opus_paas.control.leftovers import Process, ancestors, belongs, left_over
from opus_paas.settings import Settings

HOME = Path("/srv/opus")
CONF = HOME / "supervisor" / "supervisord.conf"


def proc(pid: int, ppid: int = 1, cmdline: bytes = b"x\0", environ: bytes = b"") -> Process:
    return Process(pid, ppid, cmdline, environ)


def test_the_marker_must_be_a_whole_variable_of_this_home() -> None:
    assert belongs(proc(2, environ=b"A=1\0OPUS_INSTANCE=/srv/opus\0"), HOME, CONF)
    # Another home, a longer path, a value that merely contains it: not ours.
    for environ in (b"OPUS_INSTANCE=/srv/opus2\0", b"OPUS_INSTANCE=/srv/opus/x\0",
                    b"X_OPUS_INSTANCE=/srv/opus\0", b"OPUS_HOME=/srv/opus\0",
                    b"NOTE=OPUS_INSTANCE=/srv/opus and more\0"):
        assert not belongs(proc(2, environ=environ), HOME, CONF), environ


def test_this_homes_supervisord_is_found_by_its_config() -> None:
    supervisord = b"python\0-m\0supervisor.supervisord\0-c\0/srv/opus/supervisor/supervisord.conf\0"
    assert belongs(proc(2, cmdline=supervisord), HOME, CONF)
    other = supervisord.replace(b"/srv/opus/", b"/srv/other/")
    assert not belongs(proc(2, cmdline=other), HOME, CONF)


def test_the_callers_ancestors_are_never_taken() -> None:
    table = [proc(10, 1), proc(20, 10), proc(30, 20), proc(40, 10)]
    assert ancestors(table, 30) == {30, 20, 10, 1}        # up to init, never ended
    assert ancestors([proc(5, 5)], 5) == {5}          # a loop ends


def test_left_over_keeps_what_is_marked_and_not_our_own(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    marker = f"OPUS_INSTANCE={tmp_path}".encode() + b"\0"
    me = os.getpid()
    table = [proc(me, os.getppid(), environ=marker),        # `opus up` itself
             proc(os.getppid(), 1, environ=marker),          # ... and its parent shell
             proc(900001, 1, environ=marker),                # a stray of the home
             proc(900002, 1)]                                # someone else's
    assert [p.pid for p in left_over(settings, table)] == [900001]
