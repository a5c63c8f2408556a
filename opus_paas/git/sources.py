"""Where `apps:create --from SOURCE` gets an app's first code: an https:// git URL
(anyone who may create apps; public addresses only, unless an admin asks), or a local
repository (a path or file://, admins only), cloned with C git (`--depth 1`), then
admitted into the app's repository as one commit without parents.

A SOURCE is checked strictly before git sees it: no transport helpers (`ext::`), no
option-like value, no scp-like `host:path`, no other scheme. The https host is resolved
once, every address it has must be public, and git is pinned to the first one
(`http.curloptResolve`), so a second lookup cannot point it elsewhere; redirects are
not followed. git runs with no user or system config, no prompt and no hooks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from opus_paas.errors import Forbidden, ServiceError, UsageError
from opus_paas.git import packs

Resolver = Callable[[str, int], list[str]]
HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}))*\.?")
MAX_SOURCE = 2000
POLL = 0.25


@dataclasses.dataclass(frozen=True)
class Source:
    kind: str          # "https" or "local"
    url: str           # what git is given (a local path as file://)
    shown: str         # for messages and logs: no user or password
    host: str = ""
    port: int = 443


def _refuse(source: str, why: str) -> UsageError:
    return UsageError(f"--from {why}; give an https:// git URL (e.g. "
                      "https://github.com/OWNER/REPO.git), or, as an admin, a local "
                      "repository's absolute path or file:// URL")


def parse(text: str) -> Source:
    """The source `text` names, or UsageError saying why it is refused."""
    if not text or len(text) > MAX_SOURCE:
        raise _refuse(text, "needs a source of at most 2000 characters")
    if not text.isprintable() or any(c.isspace() for c in text):
        raise _refuse(text, "takes no spaces or control characters")
    if text.startswith("-"):
        raise _refuse(text, "must not start with '-' (git would take it for an option)")
    if re.match(r"[A-Za-z0-9+.-]*::", text):
        raise _refuse(text, "names a git transport helper (such as ext::), which runs "
                      "commands; those are never used")
    if text.startswith("/"):
        return _local(text)
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", text)
    if scheme is None:
        if ":" in text.split("/", 1)[0]:
            raise _refuse(text, "looks like scp-style host:path (SSH), which Opus does not "
                          "fetch from")
        raise _refuse(text, "is a relative path")
    kind = scheme.group(1).lower()
    if kind == "file":
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
            raise _refuse(text, "is a file:// URL with a host, query or fragment")
        return _local(parts.path)
    if kind != "https":
        raise _refuse(text, f"uses {kind}://, which Opus does not fetch from")
    parts = urlsplit(text)
    host = parts.hostname or ""
    try:
        port = parts.port or 443
    except ValueError:
        raise _refuse(text, "has a port that is not a number from 1 to 65535") from None
    if parts.fragment:
        raise _refuse(text, "has a #fragment")
    if not (HOST.fullmatch(host) or _is_ip(host)) or "%" in host:
        raise _refuse(text, "has no valid host name")
    netloc = host if ":" not in host else f"[{host}]"
    if parts.port:
        netloc += f":{parts.port}"
    shown = urlunsplit(("https", netloc, parts.path, parts.query, ""))
    return Source("https", text, shown, host, port)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _local(path: str) -> Source:
    if not path.startswith("/") or "\\" in path or any(p == ".." for p in path.split("/")):
        raise _refuse(path, "must be an absolute path without '..'")
    return Source("local", "file://" + path, path)


def system_resolver(host: str, port: int) -> list[str]:
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UsageError(f"cannot resolve {host} ({exc.strerror}); check the URL") from None
    return list(dict.fromkeys(str(info[4][0]) for info in found))


def check_allowed(source: Source, *, admin: bool,
                  resolver: Resolver = system_resolver) -> str | None:
    """Refuse what `admin` (or not) may not fetch; for https, the address git is pinned
    to (every address of the host must be public, unless admin)."""
    if source.kind == "local":
        if not admin:
            raise Forbidden("only admins may create an app from a path on the Opus host; "
                            "give an https:// git URL")
        return None
    addresses = resolver(source.host, source.port)
    if not addresses:
        raise UsageError(f"{source.host} has no address; check the URL")
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        mapped = getattr(ip, "ipv4_mapped", None)
        if not admin and not (mapped or ip).is_global:
            raise Forbidden(f"{source.host} resolves to {address}, a private, loopback or "
                            "reserved address; only admins may fetch from such a host")
    return addresses[0]


def git_env(home: Path, protocol: str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": str(home), "LC_ALL": "C",
            "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "/bin/false",
            "SSH_ASKPASS": "/bin/false", "GIT_ALLOW_PROTOCOL": protocol}


def clone_argv(git: str, source: Source, address: str | None, dest: Path) -> list[str]:
    protocol = "https" if source.kind == "https" else "file"
    argv = [git, "-c", "protocol.allow=never", "-c", f"protocol.{protocol}.allow=always",
            "-c", "http.followRedirects=false", "-c", "core.hooksPath=/dev/null",
            "-c", "submodule.recurse=false", "-c", "credential.helper=",
            "-c", "core.fsmonitor=false"]
    if address is not None:
        pinned = f"[{address}]" if ":" in address else address
        argv += ["-c", f"http.curloptResolve={source.host}:{source.port}:{pinned}"]
    return [*argv, "clone", "--depth", "1", "--single-branch", "--no-tags",
            "--no-recurse-submodules", "--template=", "-q", "--", source.url, str(dest)]


def clone(git: str, source: Source, address: str | None, dest: Path, *,
          max_bytes: int, timeout: float, cancelled: threading.Event | None = None) -> None:
    """Clone `source` into `dest` (which must not exist); stopped when its files pass
    `max_bytes`, it takes `timeout` seconds or `cancelled` is set."""
    protocol = "https" if source.kind == "https" else "file"
    home = dest.parent
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(clone_argv(git, source, address, dest), cwd=home,
                                env=git_env(home, protocol), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=errors,
                                start_new_session=True)
        deadline = time.monotonic() + timeout
        why = ""
        try:
            while proc.poll() is None:
                time.sleep(POLL)
                if cancelled is not None and cancelled.is_set():
                    why = "was cancelled (the client went away)"
                elif time.monotonic() > deadline:
                    why = f"took more than {timeout:.0f} s"
                elif _size(dest) > max_bytes:
                    why = (f"is larger than {packs.size_text(max_bytes)} (the operator "
                           "sets max_pack_bytes)")
                if why:
                    break
        finally:
            if proc.poll() is None:
                # git and its helpers (git-remote-https): a process group of their own.
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        errors.seek(0)
        err = errors.read(1 << 16)
    if not why and _size(dest) > max_bytes:
        why = f"is larger than {packs.size_text(max_bytes)} (the operator sets max_pack_bytes)"
    if why:
        raise UsageError(f"cloning {source.shown} was stopped: it {why}; nothing was kept")
    if proc.returncode != 0:
        detail = _git_reason(err.decode("utf-8", "replace"), source)
        raise UsageError(f"git could not clone {source.shown}: {detail}")


def _git_reason(text: str, source: Source) -> str:
    lines = [line.split(": ", 1)[-1] for line in text.splitlines()
             if line.startswith(("fatal: ", "error: "))]
    reason = (lines[0] if lines else "no reason given").replace(source.url, source.shown)
    userinfo = urlsplit(source.url).netloc.rpartition("@")[0] if source.kind == "https" \
        else ""
    if userinfo:
        reason = reason.replace(userinfo, "***")
    return reason[:200]


def _size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


class _PipeSource:
    """packs.PackSource over a pipe from `git pack-objects`."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def take_buffered(self) -> bytes:
        return b""

    def fileno(self) -> int:
        return self.fd

    def recv_some(self) -> bytes:
        return os.read(self.fd, packs.CHUNK)


def admit(git: str, clone_dir: Path, repo_dir: Path, source: Source, *, max_bytes: int,
          max_object_bytes: int, timeout: float) -> bytes:
    """Make one commit without parents of the clone's HEAD tree (its author and message,
    with where it came from) and store it in the bare repository `repo_dir` through the
    same checks as a pushed pack. Returns the commit's id."""
    env = git_env(clone_dir, "file")

    def run(*argv: str) -> str:
        return subprocess.run([git, *argv], cwd=clone_dir, env=env, capture_output=True,
                              check=True, timeout=timeout).stdout.decode("utf-8", "replace")

    upstream = run("rev-parse", "--verify", "HEAD^{commit}").strip()
    fields = run("log", "-1", "--format=%an%x00%ae%x00%ad%x00%B", "--date=raw", upstream)
    name, email, date, message = [*fields.split("\0", 3), "", "", "", ""][:4]
    text = (message.strip() or "Import") + \
        f"\n\nImported by Opus from {source.shown} at {upstream}\n"
    commit_env = {**env, "GIT_AUTHOR_NAME": name or "unknown",
                  "GIT_AUTHOR_EMAIL": email or "unknown", "GIT_AUTHOR_DATE": date,
                  "GIT_COMMITTER_NAME": "Opus", "GIT_COMMITTER_EMAIL": "opus@localhost"}
    made = subprocess.run([git, "commit-tree", f"{upstream}^{{tree}}"], input=text.encode(),
                          cwd=clone_dir, env=commit_env, capture_output=True, check=True,
                          timeout=timeout)
    sha = made.stdout.decode().strip().encode()
    pack = subprocess.Popen([git, "pack-objects", "--revs", "--stdout", "-q"], cwd=clone_dir,
                            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    assert pack.stdin is not None and pack.stdout is not None
    try:
        pack.stdin.write(sha + b"\n")
        pack.stdin.close()
        packs.receive(git, repo_dir, _PipeSource(pack.stdout.fileno()), max_bytes=max_bytes,
                      max_object_bytes=max_object_bytes, read_timeout=timeout,
                      index_timeout=timeout, new_tips=[sha])
    finally:
        if pack.poll() is None:
            pack.kill()
        pack.wait()
        pack.stdout.close()
    if pack.returncode not in (0, None):
        raise ServiceError("git could not pack the cloned source")
    return sha
