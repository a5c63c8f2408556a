"""Pack work through C git: a pushed pack is stored only when whole, connected and under
the limit, and nothing of a refused one is left behind; a clone's pack is complete."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from opus_paas.errors import ProtocolError
from opus_paas.git import packs
from opus_paas.git.wire import ChannelReader
from tests.conftest import require_tool

GIT_ENV = {"GIT_AUTHOR_NAME": "T", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "T", "GIT_COMMITTER_EMAIL": "t@example.com",
           "PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}


def run_git(repo: Path, *args: str, input: bytes | None = None) -> bytes:
    return subprocess.run(["git", "-C", str(repo), *args], input=input, env=GIT_ENV,
                          capture_output=True, check=True).stdout


def commit(repo: Path, files: dict[str, str], message: str) -> bytes:
    for name, text in files.items():
        (repo / name).write_text(text)
    run_git(repo, "add", "-A")
    run_git(repo, "commit", "-q", "-m", message)
    return run_git(repo, "rev-parse", "HEAD").strip()


@pytest.fixture
def source(tmp_path: Path) -> Path:
    require_tool("git")
    repo = tmp_path / "source"
    repo.mkdir()
    run_git(repo, "init", "-q", "-b", "main")
    commit(repo, {f"f{i}.txt": f"file {i}\n" * 50 for i in range(20)}, "one")
    return repo


@pytest.fixture
def server(tmp_path: Path) -> Path:
    repo = tmp_path / "server.git"
    subprocess.run(["git", "init", "-q", "--bare", str(repo)], check=True)
    return repo


def pack_of(repo: Path, revs: str, *, thin: bool = False) -> bytes:
    argv = ["pack-objects", "--revs", "--stdout", "-q"] + (["--thin"] if thin else [])
    return run_git(repo, *argv, input=revs.encode())


@pytest.fixture
def wire() -> Iterator[tuple[socket.socket, ChannelReader]]:
    """A real socket pair: the test writes as the client, Opus reads the other end."""
    client, ours = socket.socketpair()
    try:
        yield client, ChannelReader(ours, read_timeout=2)   # type: ignore[arg-type]
    finally:
        client.close()
        ours.close()


def send(client: socket.socket, data: bytes, *, close: bool) -> threading.Thread:
    def write() -> None:
        client.sendall(data)
        if close:
            client.shutdown(socket.SHUT_WR)
    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


def receive(server: Path, reader: ChannelReader, tips: list[bytes],
            max_bytes: int = 1 << 30, max_object_bytes: int = 1 << 30) -> None:
    packs.receive("/usr/bin/git", server, reader, max_bytes=max_bytes,
                  max_object_bytes=max_object_bytes, read_timeout=2, index_timeout=30,
                  new_tips=tips)


def residue(server: Path) -> list[str]:
    objects = server / "objects"
    return sorted(p.name for p in objects.iterdir() if p.name.startswith("incoming-")) + \
        sorted(p.name for p in (objects / "pack").iterdir())


def test_a_whole_pack_is_stored(source: Path, server: Path,
                                wire: tuple[socket.socket, ChannelReader]) -> None:
    client, reader = wire
    tip = run_git(source, "rev-parse", "HEAD").strip()
    send(client, pack_of(source, "HEAD\n"), close=False)   # a client then waits for us
    receive(server, reader, [tip])
    assert run_git(server, "cat-file", "-t", tip.decode()) == b"commit\n"
    assert not any(p.name.startswith("incoming-") for p in (server / "objects").iterdir())


def test_a_thin_incremental_pack_is_completed_from_the_repository(
        source: Path, server: Path, wire: tuple[socket.socket, ChannelReader]) -> None:
    client, reader = wire
    first = run_git(source, "rev-parse", "HEAD").strip()
    run_git(source, "push", "-q", str(server), "main")
    second = commit(source, {"f1.txt": "file 1\n" * 50 + "changed\n"}, "two")
    send(client, pack_of(source, f"{second.decode()}\n^{first.decode()}\n", thin=True),
         close=False)
    receive(server, reader, [second])
    run_git(server, "update-ref", "refs/heads/main", second.decode())
    run_git(server, "fsck", "--strict")


def test_buffered_bytes_are_part_of_the_pack(source: Path, server: Path,
                                             wire: tuple[socket.socket, ChannelReader]) -> None:
    """The protocol reader may already hold the pack's first bytes."""
    client, reader = wire
    tip = run_git(source, "rev-parse", "HEAD").strip()
    data = pack_of(source, "HEAD\n")
    send(client, b"0000" + data, close=False)
    assert reader.read(4) == b"0000"
    receive(server, reader, [tip])
    assert run_git(server, "cat-file", "-t", tip.decode()) == b"commit\n"


@pytest.mark.parametrize("case", ["garbage", "garbage-with-header", "truncated",
                                  "bit-flipped", "empty"])
def test_a_broken_pack_is_refused_and_leaves_nothing(
        source: Path, server: Path, wire: tuple[socket.socket, ChannelReader],
        case: str) -> None:
    client, reader = wire
    good = pack_of(source, "HEAD\n")
    data = {
        "garbage": b"this is not a pack at all" * 100,
        "garbage-with-header": good[:12] + b"\x00" * 500,
        "truncated": good[: len(good) // 2],
        "bit-flipped": good[:200] + bytes([good[200] ^ 0xFF]) + good[201:],
        "empty": b"",
    }[case]
    send(client, data, close=True)
    with pytest.raises(ProtocolError, match="not valid") as raised:
        receive(server, reader, [run_git(source, "rev-parse", "HEAD").strip()])
    assert "/" not in raised.value.message.split("(")[1].split(")")[0]
    assert residue(server) == []


def test_a_pack_over_the_limit_is_refused_and_leaves_nothing(
        source: Path, server: Path, wire: tuple[socket.socket, ChannelReader]) -> None:
    client, reader = wire
    data = pack_of(source, "HEAD\n")
    send(client, data, close=False)
    with pytest.raises(ProtocolError, match="larger than the limit of 1 KiB"):
        receive(server, reader, [b"0" * 40], max_bytes=1024)
    assert residue(server) == []


def test_a_small_pack_inflating_past_the_object_limit_is_refused(
        source: Path, server: Path, wire: tuple[socket.socket, ChannelReader]) -> None:
    """A decompression bomb: 8 MiB of zeros packs into a few kilobytes."""
    client, reader = wire
    tip = commit(source, {"zeros.bin": "\0" * (8 << 20)}, "bomb")
    data = pack_of(source, "HEAD\n")
    assert len(data) < 100_000
    send(client, data, close=False)
    with pytest.raises(ProtocolError, match="holds a file of 8 MiB, over the limit of 1 MiB"):
        receive(server, reader, [tip], max_object_bytes=1 << 20)
    assert residue(server) == []


def test_a_whole_pack_still_indexing_when_the_client_falls_silent_is_stored(
        source: Path, server: Path, wire: tuple[socket.socket, ChannelReader]) -> None:
    """The client waits silently after its last byte; a slow index is not a stall."""
    client, reader = wire
    tip = run_git(source, "rev-parse", "HEAD").strip()
    data = pack_of(source, "HEAD\n")
    assert len(data) < 60_000   # fits the socket's buffer: all of it is there at once
    client.sendall(data)
    packs.receive("/usr/bin/git", server, reader, max_bytes=1 << 30, max_object_bytes=1 << 30,
                  read_timeout=0.001, index_timeout=30, new_tips=[tip])
    assert run_git(server, "cat-file", "-t", tip.decode()) == b"commit\n"


def test_leftover_quarantines_are_removed(server: Path) -> None:
    (server / "objects" / "incoming-abc123" / "pack").mkdir(parents=True)
    assert [p.name for p in packs.remove_leftovers(server)] == ["incoming-abc123"]
    assert residue(server) == []


def test_the_object_type_comes_from_git(source: Path) -> None:
    tip = run_git(source, "rev-parse", "HEAD").strip()
    tree = run_git(source, "rev-parse", "HEAD^{tree}").strip()
    assert packs.object_type("/usr/bin/git", source / ".git", tip) == "commit"
    assert packs.object_type("/usr/bin/git", source / ".git", tree) == "tree"
    assert packs.object_type("/usr/bin/git", source / ".git", b"1" * 40) == ""


def test_a_stalled_client_is_cut_off_and_leaves_nothing(
        source: Path, server: Path, wire: tuple[socket.socket, ChannelReader]) -> None:
    client, reader = wire
    data = pack_of(source, "HEAD\n")
    send(client, data[:100], close=False)
    started = time.monotonic()
    with pytest.raises(ProtocolError, match="sent nothing for 2 s"):
        receive(server, reader, [b"0" * 40])
    assert time.monotonic() - started < 6
    assert residue(server) == []


def test_a_pack_missing_what_its_commit_needs_is_refused(
        source: Path, server: Path, wire: tuple[socket.socket, ChannelReader]) -> None:
    client, reader = wire
    tip = run_git(source, "rev-parse", "HEAD").strip()
    only_the_commit = run_git(source, "pack-objects", "--stdout", "-q", input=tip + b"\n")
    send(client, only_the_commit, close=False)
    with pytest.raises(ProtocolError, match="refers to objects it did not send"):
        receive(server, reader, [tip])
    assert residue(server) == []


def test_send_writes_a_complete_pack_and_an_incremental_one(source: Path,
                                                            tmp_path: Path) -> None:
    first = run_git(source, "rev-parse", "HEAD").strip()
    second = commit(source, {"new.txt": "new\n"}, "two")
    chunks: list[bytes] = []
    packs.send("/usr/bin/git", source / ".git", [second], [], thin=False, ofs_delta=True,
               include_tag=False, write=chunks.append)
    clone = tmp_path / "clone.git"
    subprocess.run(["git", "init", "-q", "--bare", str(clone)], check=True)
    run_git(clone, "index-pack", "--stdin", input=b"".join(chunks))
    run_git(clone, "update-ref", "refs/heads/main", second.decode())
    run_git(clone, "fsck", "--strict")

    incremental: list[bytes] = []
    packs.send("/usr/bin/git", source / ".git", [second], [first], thin=True, ofs_delta=True,
               include_tag=False, write=incremental.append)
    assert len(b"".join(incremental)) < len(b"".join(chunks)) / 2


def test_the_reader_returns_short_at_end_of_stream_and_times_out_on_silence(
        wire: tuple[socket.socket, ChannelReader]) -> None:
    client, reader = wire
    client.sendall(b"0123456789")
    assert reader.read(4) == b"0123"
    client.shutdown(socket.SHUT_WR)
    assert reader.read(100) == b"456789"   # six left, then the end: short, not a hang
    assert reader.read(4) == b""


def test_the_reader_gives_up_on_a_silent_client(
        wire: tuple[socket.socket, ChannelReader]) -> None:
    _client, reader = wire
    started = time.monotonic()
    with pytest.raises(ProtocolError, match="sent nothing for 2 s"):
        reader.read(4)
    assert time.monotonic() - started < 4
