"""Pack work handed to C git: `index-pack` stores a pushed pack, `pack-objects` writes
the pack a clone or fetch asks for. dulwich keeps the protocol; these two do the
inflating, hashing and delta search several times faster than Python can.

A pushed pack lands in a quarantine directory inside the repository and moves into
objects/pack only once it is complete and connected; whatever fails, the quarantine
is removed, so a broken, truncated or oversized push leaves nothing behind.
"""

from __future__ import annotations

import logging
import os
import select
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Protocol

from opus_paas.errors import ProtocolError, ServiceError

log = logging.getLogger("opus.packs")

CHUNK = 64 * 1024
QUARANTINE_PREFIX = "incoming-"


class PackSource(Protocol):
    """Where a pushed pack's bytes come from (the SSH channel in production)."""

    def take_buffered(self) -> bytes:
        """Bytes already read off the wire but not yet consumed."""

    def fileno(self) -> int:
        """A descriptor that becomes readable when more bytes arrive."""

    def recv_some(self) -> bytes:
        """At least one byte if the peer sent any; b'' at end of stream."""


def git_env(repo_dir: Path, **extra: str) -> dict[str, str]:
    """A clean environment for C git working on `repo_dir`: no user or system config,
    no inherited GIT_* variables."""
    return {"PATH": "/usr/bin:/bin", "HOME": str(repo_dir), "LC_ALL": "C",
            "GIT_DIR": str(repo_dir), "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull, **extra}


def receive(git: str, repo_dir: Path, source: PackSource, *, max_bytes: int,
            max_object_bytes: int, read_timeout: float, index_timeout: float,
            new_tips: Sequence[bytes]) -> None:
    """Read one pack from `source` into `repo_dir`'s object store.

    Raises ProtocolError (a message for the client) when the pack is over `max_bytes`,
    holds an object over `max_object_bytes` once inflated, is malformed or truncated,
    stalls for `read_timeout` seconds or leaves `new_tips` pointing at missing objects.
    """
    objects = repo_dir / "objects"
    quarantine = Path(tempfile.mkdtemp(prefix=QUARANTINE_PREFIX, dir=objects))
    try:
        (quarantine / "pack").mkdir()
        env = git_env(repo_dir, GIT_OBJECT_DIRECTORY=str(quarantine),
                      GIT_ALTERNATE_OBJECT_DIRECTORIES=str(objects))
        _index_pack(git, env, source, max_bytes, read_timeout, index_timeout)
        _check_sizes(git, env, quarantine / "pack", max_object_bytes)
        _check_connected(git, env, new_tips)
        _move_packs(quarantine / "pack", objects / "pack")
    finally:
        shutil.rmtree(quarantine, ignore_errors=True)


def remove_leftovers(repo_dir: Path) -> list[Path]:
    """Quarantines a server that was stopped mid-push left behind (call with no push
    running)."""
    found = list((repo_dir / "objects").glob(QUARANTINE_PREFIX + "*"))
    for path in found:
        shutil.rmtree(path, ignore_errors=True)
    return found


def object_type(git: str, repo_dir: Path, sha: bytes) -> str:
    """'commit', 'tree', 'blob' or 'tag', asked of C git (which never loads the object)."""
    result = subprocess.run([git, "cat-file", "-t", sha.decode("ascii")],
                            env=git_env(repo_dir), cwd=repo_dir, capture_output=True,
                            text=True, check=False)
    return result.stdout.strip()


def _index_pack(git: str, env: dict[str, str], source: PackSource, max_bytes: int,
                read_timeout: float, index_timeout: float) -> None:
    proc = subprocess.Popen(
        [git, "index-pack", "--stdin", "--fix-thin", f"--max-input-size={max_bytes}"],
        env=env, cwd=env["GIT_DIR"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    stderr: list[bytes] = []
    errors = proc.stderr
    drain = threading.Thread(target=lambda: stderr.append(errors.read()), daemon=True)
    drain.start()
    try:
        silent = _pump(source, proc, max_bytes, read_timeout)
        if not proc.stdin.closed:
            proc.stdin.close()
        try:
            # A whole pack may still be resolving its deltas long after its last byte.
            code = proc.wait(index_timeout)
        except subprocess.TimeoutExpired:
            raise ProtocolError("indexing the pushed pack took too long; nothing was "
                                "stored") from None
        proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        drain.join()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            stream.close()
    if code != 0 and silent:
        raise ProtocolError(f"the client sent nothing for {read_timeout:.0f} s in the "
                            "middle of its pack; nothing was stored; push again")
    if code != 0:
        detail = b"".join(stderr).decode("utf-8", "replace").strip()
        log.info("index-pack refused a pack: %s", detail)
        raise ProtocolError(f"the pushed pack is not valid ({_git_reason(detail)}); "
                            "nothing was stored; push again with a current git")


def _pump(source: PackSource, proc: subprocess.Popen[bytes], max_bytes: int,
          read_timeout: float) -> bool:
    """Copy bytes from `source` to index-pack until it has read a whole pack (it stops
    reading then: the client sends nothing after its pack and waits for our answer).
    Returns True if the client fell silent first: index-pack then decides whether what
    it got was a whole pack still being indexed, or a truncated one."""
    assert proc.stdin is not None and proc.stdout is not None
    poller = select.poll()   # select() cannot watch descriptors past 1023
    poller.register(source.fileno(), select.POLLIN)
    poller.register(proc.stdout.fileno(), select.POLLIN)
    output = proc.stdout.fileno()
    total = 0
    chunk = source.take_buffered()
    while True:
        if chunk:
            total += len(chunk)
            if total > max_bytes:
                raise ProtocolError(
                    f"the push is larger than the limit of {size_text(max_bytes)}; nothing was "
                    "stored (the operator sets max_pack_bytes)")
            try:
                proc.stdin.write(chunk)
                proc.stdin.flush()
            except BrokenPipeError:
                return False   # index-pack stopped reading: finished or failed
        ready = {fd for fd, _event in poller.poll(read_timeout * 1000)}
        if not ready:
            return True
        if output in ready:
            return False
        chunk = source.recv_some()
        if not chunk:
            proc.stdin.close()   # end of stream: index-pack reports a truncation
            return False


def _check_sizes(git: str, env: dict[str, str], pack_dir: Path, max_object_bytes: int) -> None:
    """Refuse a pack holding an object larger than `max_object_bytes` once inflated: a
    few compressed kilobytes can inflate to gigabytes."""
    for index in pack_dir.glob("*.idx"):
        with index.open("rb") as idx:
            listed = subprocess.run([git, "show-index"], stdin=idx, env=env,
                                    cwd=env["GIT_DIR"], capture_output=True, check=True)
        shas = b"".join(line.split()[1] + b"\n" for line in listed.stdout.splitlines())
        sizes = subprocess.run([git, "cat-file", "--batch-check=%(objectsize)"], input=shas,
                               env=env, cwd=env["GIT_DIR"], capture_output=True, check=True)
        largest = max((int(n) for n in sizes.stdout.split()), default=0)
        if largest > max_object_bytes:
            raise ProtocolError(
                f"the push holds a file of {size_text(largest)}, over the limit of "
                f"{size_text(max_object_bytes)}; nothing was stored (the operator sets "
                "max_object_bytes)")


def _git_reason(detail: str) -> str:
    """git's own complaint, without the paths it names."""
    for line in detail.splitlines():
        if line.startswith(("fatal: ", "error: ")):
            text = line.split(": ", 1)[1]
            if "/" not in text:
                return text[:120]
    return "git could not read it"


def size_text(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f}".removesuffix(".0") + f" {unit}"
    return f"{n} bytes"


def _check_connected(git: str, env: dict[str, str], new_tips: Sequence[bytes]) -> None:
    if not new_tips:
        return
    result = subprocess.run(
        [git, "rev-list", "--objects", "--quiet", "--stdin", "--not", "--all"],
        input=b"".join(tip + b"\n" for tip in new_tips), env=env, cwd=env["GIT_DIR"],
        capture_output=True, check=False,
    )
    if result.returncode != 0:
        log.info("connectivity check failed: %s", result.stderr.decode("utf-8", "replace"))
        raise ProtocolError("the push refers to objects it did not send; nothing was "
                            "stored; fetch, then push again")


def _move_packs(source: Path, dest: Path) -> None:
    """Pack before index: dulwich (and git) only use a pack once its index exists."""
    dest.mkdir(parents=True, exist_ok=True)
    for suffix in (".pack", ".rev", ".idx"):
        for path in sorted(source.glob(f"*{suffix}")):
            os.replace(path, dest / path.name)


def send(git: str, repo_dir: Path, wants: Iterable[bytes], haves: Iterable[bytes], *,
         thin: bool, ofs_delta: bool, include_tag: bool,
         write: Callable[[bytes], object]) -> None:
    """Write the pack holding `wants` minus what `haves` reach, as `git upload-pack`
    would, to `write` in chunks."""
    argv = [git, "pack-objects", "--revs", "--stdout", "-q"]
    argv += ["--thin"] if thin else []
    argv += ["--delta-base-offset"] if ofs_delta else []
    argv += ["--include-tag"] if include_tag else []
    revs = [w + b"\n" for w in wants] + [b"^" + h + b"\n" for h in haves]
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(argv, env=git_env(repo_dir), cwd=repo_dir,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                                bufsize=0)
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(b"".join(revs))
            proc.stdin.close()
            while chunk := proc.stdout.read(CHUNK):
                write(chunk)
            code = proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
        if code != 0:
            stderr.seek(0)
            log.error("pack-objects failed: %s", stderr.read().decode("utf-8", "replace"))
            raise ServiceError("Opus could not make the pack asked for; the operator's log "
                               "has the details")
