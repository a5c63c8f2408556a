"""Benchmark: git transfer speed of Opus's SSH git server (paramiko + dulwich) as ratios
to C git behind OpenSSH's sshd, both measured in the same run on loopback.

    .venv/bin/python bench/git_speed.py [--runs N] [--files N] [--megabytes N]

- a seeded ~100 MB, 20,000-file repository (one commit, then a second that changes 50
  files) is generated in a temporary directory;
- baseline: a throwaway OpenSSH sshd (own config, host key, port and authorized_keys,
  started as a child and stopped by its PID) in front of bare repositories and C git;
  Debian's openssh-server is installed first if /usr/sbin/sshd is missing;
- Opus: `opus up` in a temporary OPUS_HOME as the tests do; pushes go to refs/heads/bench,
  which Opus only stores (a push to main would build), so only git transfer is timed.

Measured for each server, the two taking turns round by round: full push to a new
remote, clone (`--no-checkout`: the checkout is client work, the same for both),
incremental push of the second commit, fetch of it into the clone, 5 simultaneous full
pushes to 5 new remotes, and a bare SSH connection for reference. Prints a
Markdown table, writes it to docs/git-speed.md and the figures to .benchmarks/git_speed.json.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import pwd
import random
import re
import shutil
import socket
import statistics
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import dulwich
import paramiko

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.conftest import CHECKOUT, Opus, SshKey, free_port, make_key, start_opus, stop_opus

SEED = 20240601
FILES = 20_000
MEGABYTES = 100
CHANGED_FILES = 50
RUNS = 3
SSH_ROUND_TRIPS = 5
PARALLEL = 5
BUDGET_SECONDS = 240.0   # per group of repeats: no new round once it would pass this
GIT_TIMEOUT = 900
MAX_PACK_BYTES = 1 << 30   # Opus's default
BRANCH = "bench"
REF = f"refs/heads/{BRANCH}"
FIXED_DATE = "2024-06-01T12:00:00+00:00"
GOALS = {"push": 1.5, "clone": 2.0, "parallel": 2.0}

SSHD = Path("/usr/sbin/sshd")
POLICY_RC_D = Path("/usr/sbin/policy-rc.d")
PRIVSEP_DIR = Path("/run/sshd")
DOC = CHECKOUT / "docs" / "git-speed.md"
JSON_OUT = CHECKOUT / ".benchmarks" / "git_speed.json"

# (key, what is measured, goal kind or None)
MEASURES = [
    ("ssh_round_trip", "SSH connection alone (`ssh HOST true`, no git)", None),
    ("full_push", "full push (new remote)", "push"),
    ("incremental_push", f"incremental push (second commit, {CHANGED_FILES} files)", "push"),
    ("full_clone", "full clone (`--no-checkout`)", "clone"),
    ("incremental_fetch", "incremental fetch (second commit)", "clone"),
    ("parallel_push", f"{PARALLEL} simultaneous full pushes (wall time)", None),
]


class GitFailed(Exception):
    """A git command failed; the message carries its stderr verbatim."""


# --- running git ---------------------------------------------------------------------


def ssh_command(key: SshKey, log_level: str = "ERROR") -> list[str]:
    return ["ssh", "-i", str(key.private), "-o", "IdentitiesOnly=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes", "-o", f"LogLevel={log_level}"]


def client_env(key: SshKey) -> dict[str, str]:
    """The same client environment for both servers: one key, one set of ssh options,
    no user or system git config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "OPUS_"))}
    env.update({
        "GIT_SSH_COMMAND": " ".join(ssh_command(key)),
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
        # No `gc --auto` in the background (commit, fetch) racing the timed commands.
        "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "gc.auto", "GIT_CONFIG_VALUE_0": "0",
        "GIT_AUTHOR_NAME": "Bench", "GIT_AUTHOR_EMAIL": "bench@example.com",
        "GIT_COMMITTER_NAME": "Bench", "GIT_COMMITTER_EMAIL": "bench@example.com",
        "GIT_AUTHOR_DATE": FIXED_DATE, "GIT_COMMITTER_DATE": FIXED_DATE,
    })
    return env


def run_git(args: Sequence[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["git", *args], env=env, capture_output=True, text=True,
                            timeout=GIT_TIMEOUT, check=False)
    if result.returncode != 0:
        raise GitFailed(f"`git {' '.join(args)}` exited {result.returncode}; stderr:\n"
                        f"{result.stderr.rstrip()}")
    return result


def timed_git(args: Sequence[str], env: dict[str, str]) -> tuple[float, str]:
    """Seconds the command took, and its stderr."""
    start = time.perf_counter()
    result = run_git(args, env)
    return time.perf_counter() - start, result.stderr


def expect_ref(repo: Path, ref: str, sha: str, env: dict[str, str]) -> None:
    got = run_git(["-C", str(repo), "rev-parse", ref], env).stdout.strip()
    if got != sha:
        raise GitFailed(f"{ref} in {repo.name} is {got}, expected {sha}")


# --- the generated repository --------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Source:
    path: Path
    files: int
    content_bytes: int
    first: str    # branch v1
    second: str   # branch v2


def file_path(index: int) -> str:
    """Nested dirs, 400 leaves of ~50 files; every tenth file is binary."""
    top, sub = index % 16, (index // 16) % 25
    if index % 10 == 0:
        name = f"blob{index:05d}.bin"
    else:
        name = f"text{index:05d}.{('py', 'txt', 'md', 'js')[index % 4]}"
    return f"src/pkg{top:02d}/mod{sub:02d}/{name}"


def line_pool(rng: random.Random) -> list[str]:
    """Code-like lines over a small vocabulary: zlib gets roughly 2x on them."""
    letters = string.ascii_lowercase
    words = ["".join(rng.choices(letters, k=rng.randint(2, 9))) for _ in range(500)]
    return [" " * (4 * rng.randint(0, 3)) + " ".join(rng.choices(words, k=rng.randint(3, 12)))
            + "\n" for _ in range(10_000)]


def text_content(rng: random.Random, pool: list[str], size: int) -> bytes:
    text = "".join(rng.choices(pool, k=size // 40 + 1))
    return text[:size].encode()


def write_files(root: Path, rng: random.Random, files: int, total_bytes: int) -> int:
    """Write the tree: 60% of the bytes as text in 90% of the files, 40% as random
    (incompressible) bytes in the rest. Returns the bytes written."""
    pool = line_pool(rng)
    binaries = len(range(0, files, 10))
    text_mean = int(0.6 * total_bytes / max(1, files - binaries))
    binary_mean = int(0.4 * total_bytes / max(1, binaries))
    written = 0
    for index in range(files):
        path = root / file_path(index)
        path.parent.mkdir(parents=True, exist_ok=True)
        if index % 10 == 0:
            data = rng.randbytes(rng.randint(binary_mean // 2, binary_mean * 3 // 2))
        else:
            data = text_content(rng, pool, rng.randint(text_mean // 2, text_mean * 3 // 2))
        path.write_bytes(data)
        written += len(data)
    return written


def change_files(root: Path, rng: random.Random, files: int, count: int) -> None:
    """The second commit: append to text files, overwrite the first KiB of binaries."""
    for index in sorted(rng.sample(range(files), min(count, files))):
        path = root / file_path(index)
        data = path.read_bytes()
        if index % 10 == 0:
            data = rng.randbytes(1024) + data[1024:]
        else:
            data += f"# changed in the second commit: {rng.random()}\n".encode()
        path.write_bytes(data)


def make_source(directory: Path, files: int, total_bytes: int, env: dict[str, str]) -> Source:
    rng = random.Random(SEED)
    directory.mkdir(parents=True)
    written = write_files(directory, rng, files, total_bytes)
    repo = ["-C", str(directory)]
    run_git([*repo, "init", "-q", "-b", "main"], env)
    run_git([*repo, "add", "-A"], env)
    run_git([*repo, "commit", "-q", "-m", "generated tree"], env)
    run_git([*repo, "branch", "v1"], env)
    change_files(directory, rng, files, CHANGED_FILES)
    run_git([*repo, "commit", "-q", "-a", "-m", f"change {CHANGED_FILES} files"], env)
    run_git([*repo, "branch", "v2"], env)
    # Packed once, as a working repository normally is: every push then reads the
    # same pack instead of the first one compressing 20,000 loose objects.
    run_git([*repo, "gc", "-q"], env)
    first = run_git([*repo, "rev-parse", "v1"], env).stdout.strip()
    second = run_git([*repo, "rev-parse", "v2"], env).stdout.strip()
    return Source(directory, files, written, first, second)


# --- OpenSSH baseline ----------------------------------------------------------------


def ensure_openssh_server() -> None:
    """Install Debian's openssh-server if sshd is missing, without starting its service."""
    if SSHD.exists():
        return
    if os.geteuid() != 0:
        raise SystemExit(f"{SSHD} is missing; run as root (to apt-get install it) or "
                         "install openssh-server first")
    before = sshd_pids()
    with service_starts_refused():
        apt_install("openssh-server")
    started = sshd_pids() - before
    if started:
        print(f"warning: sshd processes {sorted(started)} appeared during the install; "
              "they are not this bench's and are left alone", file=sys.stderr)


@contextlib.contextmanager
def service_starts_refused() -> Iterator[None]:
    """A policy-rc.d that answers 101 (refuse) for the duration; an existing one that
    already does is left as it is, any other is set aside and put back."""
    saved = POLICY_RC_D.with_name("policy-rc.d.git-speed-saved")
    existing = POLICY_RC_D.exists()
    if existing and "exit 101" in POLICY_RC_D.read_text(errors="replace"):
        yield
        return
    if existing:
        POLICY_RC_D.rename(saved)
    POLICY_RC_D.write_text("#!/bin/sh\n# bench/git_speed.py: no service starts during "
                           "its package install\nexit 101\n")
    POLICY_RC_D.chmod(0o755)
    try:
        yield
    finally:
        POLICY_RC_D.unlink()
        if existing:
            saved.rename(POLICY_RC_D)


def apt_install(package: str) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    policy = subprocess.run(["apt-cache", "policy", package], env=env, capture_output=True,
                            text=True, check=False).stdout
    if "Candidate:" not in policy or "Candidate: (none)" in policy:
        subprocess.run(["apt-get", "update", "-q"], env=env, check=True)
    install = ["apt-get", "install", "-y", "-q", package]
    if subprocess.run(install, env=env, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, check=True)   # stale lists
        subprocess.run(install, env=env, check=True)


def sshd_pids() -> set[int]:
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(entry / "exe") == str(SSHD):
                    pids.add(int(entry.name))
    return pids


def sshd_config(port: int, directory: Path) -> str:
    # No AcceptEnv GIT_PROTOCOL (Debian's default config has none either): git speaks
    # protocol v0 here, as it does with Opus, which takes no env requests.
    return "\n".join([
        f"Port {port}",
        "ListenAddress 127.0.0.1",
        f"HostKey {directory / 'host_ed25519'}",
        f"PidFile {directory / 'sshd.pid'}",
        f"AuthorizedKeysFile {directory / 'authorized_keys'}",
        "AuthenticationMethods publickey",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",
        "UsePAM no",
        "StrictModes no",
        "PrintMotd no",
        "MaxStartups 64",
        "MaxSessions 64",
        "LogLevel ERROR",
        # Debian's bash sources ~/.bashrc for commands run by sshd unless it is a nested
        # shell; here root's .bashrc (pyenv init) cost ~0.25 s a connection, which a real
        # git account (git-shell or a plain shell) does not pay.
        "SetEnv SHLVL=1",
        "",
    ])


@contextlib.contextmanager
def openssh_server(directory: Path, key: SshKey) -> Iterator[int]:
    """A throwaway sshd on a free loopback port; yields the port, stops it by PID."""
    directory.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "git-speed-host",
                    "-f", str(directory / "host_ed25519")], check=True)
    shutil.copyfile(key.public, directory / "authorized_keys")
    port = free_port()
    config = directory / "sshd_config"
    config.write_text(sshd_config(port, directory))
    made_privsep = not PRIVSEP_DIR.exists()
    if made_privsep:   # sshd refuses to start without it; the service would create it
        PRIVSEP_DIR.mkdir(mode=0o755)
    log_path = directory / "sshd.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)],
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        try:
            wait_for_port(port, process, log_path)
            yield port
        finally:
            stop_process(process)
            if made_privsep:
                with contextlib.suppress(OSError):
                    PRIVSEP_DIR.rmdir()


def wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"sshd exited {process.returncode}:\n{log.read_text()}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"sshd did not listen on {port}:\n{log.read_text()}")


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


# --- measuring -----------------------------------------------------------------------


@dataclasses.dataclass
class Figures:
    seconds: dict[str, list[float]] = dataclasses.field(
        default_factory=lambda: {key: [] for key, _, _ in MEASURES})
    stderr: dict[str, str] = dataclasses.field(default_factory=dict)
    remote_bytes: int | None = None
    negotiated: str | None = None
    error: str | None = None
    server_log: list[str] = dataclasses.field(default_factory=list)

    def median(self, key: str) -> float | None:
        values = self.seconds[key]
        return statistics.median(values) if values else None


@dataclasses.dataclass
class Target:
    """A git server under test: `new_remote(name)` returns the URL of a new, empty
    remote (creating it first where the server needs that)."""

    label: str
    ssh_user: str
    port: int
    new_remote: Callable[[str], str]
    remote_dir: Callable[[str], Path]
    figures: Figures = dataclasses.field(default_factory=Figures)


def repeat(measure: Callable[[int], None], runs: int, budget: float) -> None:
    """Call measure(0), measure(1), ... up to `runs` times; skip the rest once one more
    run (as long as the last) would take the group past `budget` seconds."""
    start = time.monotonic()
    for run in range(runs):
        began = time.monotonic()
        measure(run)
        now = time.monotonic()
        if now - start + (now - began) > budget:
            return


def push_clone_fetch(target: Target, source: Source, work: Path, env: dict[str, str],
                     run: int) -> None:
    """One cycle on a new remote: full push, clone, incremental push, fetch."""
    figures = target.figures
    src = ["-C", str(source.path)]
    name = f"full-{run}"
    url = target.new_remote(name)
    record(figures, "full_push", timed_git([*src, "push", url, f"v1:{REF}"], env))
    if figures.remote_bytes is None:
        figures.remote_bytes = tree_bytes(target.remote_dir(name))
    clone = work / f"{target.label}-clone-{run}"
    record(figures, "full_clone",
           timed_git(["clone", "--no-checkout", "--branch", BRANCH, url, str(clone)], env))
    expect_ref(clone, f"refs/remotes/origin/{BRANCH}", source.first, env)
    record(figures, "incremental_push", timed_git([*src, "push", url, f"v2:{REF}"], env))
    record(figures, "incremental_fetch", timed_git(["-C", str(clone), "fetch", "origin"], env))
    expect_ref(clone, f"refs/remotes/origin/{BRANCH}", source.second, env)
    shutil.rmtree(clone)


def record(figures: Figures, key: str, timing: tuple[float, str]) -> None:
    seconds, stderr = timing
    figures.seconds[key].append(seconds)
    figures.stderr.setdefault(key, stderr)


def parallel_pushes(target: Target, source: Source, env: dict[str, str], run: int) -> None:
    """PARALLEL full pushes of v1 to PARALLEL new remotes at once; the wall time."""
    urls = [target.new_remote(f"par-{run}-{n}") for n in range(PARALLEL)]
    start = time.perf_counter()
    processes: list[subprocess.Popen[str]] = []
    try:
        for url in urls:
            processes.append(subprocess.Popen(
                ["git", "-C", str(source.path), "push", url, f"v1:{REF}"], env=env,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                text=True))
        failures = []
        for process in processes:
            _, stderr = process.communicate(timeout=GIT_TIMEOUT)
            if process.returncode != 0:
                failures.append(f"exit {process.returncode}: {stderr.rstrip()}")
        elapsed = time.perf_counter() - start
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    if failures:
        raise GitFailed(f"{len(failures)} of {PARALLEL} simultaneous pushes failed:\n"
                        + "\n".join(failures))
    target.figures.seconds["parallel_push"].append(elapsed)


def interleaved(targets: list[Target], runs: int, budget: float,
                measure: Callable[[Target, int], None]) -> None:
    """Round after round, `measure` each target in turn, the order alternating between
    rounds: whatever else runs on the machine weighs on both alike. A target that fails
    drops out with its error recorded."""
    def one_round(run: int) -> None:
        for target in targets if run % 2 == 0 else targets[::-1]:
            if target.figures.error is None:
                attempt(target, measure, run)

    repeat(one_round, runs, budget)


def attempt(target: Target, measure: Callable[[Target, int], None], run: int) -> None:
    try:
        measure(target, run)
    except (GitFailed, subprocess.TimeoutExpired) as exc:
        target.figures.error = str(exc)
        print(f"{target.label}: {exc}", file=sys.stderr)


def measure_all(targets: list[Target], source: Source, work: Path, key: SshKey, runs: int,
                budget: float) -> None:
    env = client_env(key)
    interleaved(targets, runs, budget,
                lambda target, run: push_clone_fetch(target, source, work, env, run))
    interleaved(targets, runs, budget,
                lambda target, run: parallel_pushes(target, source, env, run))
    for target in targets:
        ssh_facts(key, target)


def ssh_facts(key: SshKey, target: Target) -> None:
    """Time bare SSH connections (Opus refuses `true`, after the same handshake) and
    note the key exchange, cipher and MAC the client settles on."""
    figures = target.figures
    where = ["-p", str(target.port), f"{target.ssh_user}@127.0.0.1", "true"]
    command = [*ssh_command(key), *where]
    for _ in range(SSH_ROUND_TRIPS):
        start = time.perf_counter()
        subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, timeout=30,
                       check=False)
        figures.seconds["ssh_round_trip"].append(time.perf_counter() - start)
    result = subprocess.run([*ssh_command(key, "DEBUG1"), *where], stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=30, check=False)
    kex = re.search(r"kex: algorithm: (\S+)", result.stderr)
    cipher = re.search(r"kex: server->client cipher: (\S+) MAC: (\S+)", result.stderr)
    if kex and cipher:
        mac = "" if cipher.group(2) == "<implicit>" else f" + {cipher.group(2)}"
        figures.negotiated = f"{kex.group(1)}, {cipher.group(1)}{mac}"


def tree_bytes(path: Path) -> int | None:
    if not path.is_dir():
        return None
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def openssh_target(work: Path, port: int, env: dict[str, str]) -> Target:
    """Bare repositories under work/plain-repos, reached as the current user."""
    user = pwd.getpwuid(os.geteuid()).pw_name
    repos = work / "plain-repos"
    repos.mkdir()

    def new_remote(name: str) -> str:
        run_git(["init", "-q", "--bare", str(repos / f"{name}.git")], env)
        return f"ssh://{user}@127.0.0.1:{port}{repos / name}.git"

    return Target("openssh", user, port, new_remote, lambda name: repos / f"{name}.git")


def opus_target(opus: Opus) -> Target:
    """A new name is a new app: its first push creates it."""
    return Target("opus", "git", opus.ssh_port,
                  lambda name: f"ssh://git@127.0.0.1:{opus.ssh_port}/{name}.git",
                  lambda name: opus.home / "repos" / f"{name}.git")


@contextlib.contextmanager
def running_opus(key: SshKey) -> Iterator[Opus]:
    """`opus up` in a temporary OPUS_HOME as the tests do, `key` registered; `opus down`."""
    # The tests lower the push size limit to a few MiB; this bench needs a real one.
    opus = start_opus(OPUS_MAX_PACK_BYTES=str(MAX_PACK_BYTES))
    try:
        opus.cli("keys:add", "bench", str(key.public))
        yield opus
    finally:
        stop_opus(opus)


def unusual_log_lines(path: Path, limit: int = 200) -> list[str]:
    """Lines of Opus's sshd log other than its routine INFO lines (tracebacks, errors)."""
    if not path.exists():
        return ["(no opus-sshd.log)"]
    routine = re.compile(r"^\S+ \S+ \S+ INFO ")
    lines = [line for line in path.read_text(errors="replace").splitlines()
             if line.strip() and not routine.match(line)]
    return lines[:limit]


# --- reporting -----------------------------------------------------------------------


def versions() -> dict[str, str]:
    def first_line(args: list[str]) -> str:
        result = subprocess.run(args, capture_output=True, text=True, check=False)
        return (result.stdout or result.stderr).strip().splitlines()[0]

    dulwich_version = dulwich.__version__
    return {
        "git": first_line(["git", "--version"]).removeprefix("git version "),
        "openssh": first_line(["ssh", "-V"]),
        "dulwich": ".".join(map(str, dulwich_version)) if isinstance(dulwich_version, tuple)
        else str(dulwich_version),
        "paramiko": paramiko.__version__,
        "python": platform.python_version(),
    }


def ratio(top: float | None, bottom: float | None) -> float | None:
    return top / bottom if top is not None and bottom else None


def fmt(value: float | None, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:.2f}{suffix}"


def verdict(value: float | None, goal: float) -> str:
    if value is None:
        return "n/a"
    return "met" if value <= goal else "**not met**"


def parallel_ratio(figures: Figures) -> float | None:
    return ratio(figures.median("parallel_push"), figures.median("full_push"))


def tables(plain: Figures, opus: Figures) -> str:
    lines = [
        "| measure | C git + OpenSSH (s) | Opus (s) | Opus / C git | goal | runs (C git, Opus) |",
        "|---|---|---|---|---|---|",
    ]
    for key, label, goal_kind in MEASURES:
        value = ratio(opus.median(key), plain.median(key))
        goal = (f"≤ {GOALS[goal_kind]}x: {verdict(value, GOALS[goal_kind])}"
                if goal_kind else "(see below)")
        lines.append(f"| {label} | {fmt(plain.median(key))} | {fmt(opus.median(key))} | "
                     f"{fmt(value, 'x')} | {goal} | "
                     f"{len(plain.seconds[key])}, {len(opus.seconds[key])} |")
    lines += [
        "",
        f"| {PARALLEL} simultaneous full pushes / one full push | ratio | goal |",
        "|---|---|---|",
        f"| C git + OpenSSH | {fmt(parallel_ratio(plain), 'x')} | (reference) |",
        f"| Opus | {fmt(parallel_ratio(opus), 'x')} | ≤ {GOALS['parallel']}x: "
        f"{verdict(parallel_ratio(opus), GOALS['parallel'])} |",
    ]
    return "\n".join(lines)


def document(source: Source, plain: Figures, opus: Figures, info: dict[str, str],
             when: str, load: float) -> str:
    megabytes = source.content_bytes / 1e6
    packed = {name: fmt(None if f.remote_bytes is None else f.remote_bytes / 1e6, " MB")
              for name, f in (("C git", plain), ("Opus", opus))}
    errors = [f"{name}:\n\n```text\n{f.error}\n```\n"
              for name, f in (("C git + OpenSSH", plain), ("Opus", opus)) if f.error]
    parts = [
        "# Git transfer speed: latest figures",
        "",
        f"Measured with `bench/git_speed.py` on {when}, on one {os.cpu_count()}-core machine, "
        "client and servers on loopback. Each figure is the median of the runs shown, "
        "in seconds of the client's wall time; the ratios compare Opus with C git behind "
        "OpenSSH's sshd in the same invocation, the two taking turns round by round. "
        f"Load average (1 min) at the start: {load:.2f}; anything else running on the "
        "machine skews the figures.",
        "",
        f"- Repository: {source.files:,} files, {megabytes:.0f} MB (seeded; 90% of the files "
        "code-like text, 10% random bytes holding 40% of the size) in one commit, and a "
        f"second commit changing {CHANGED_FILES} files. Size of a remote after the first "
        f"full push: C git {packed['C git']}, Opus {packed['Opus']}.",
        f"- Opus: `opus up` in a temporary OPUS_HOME; pushes go to `{REF}`, which Opus only "
        "stores (no build), and the first push to a name creates the app, so a full push "
        "includes that.",
        f"- Baseline: C git {info['git']} behind a throwaway sshd ({info['openssh']}), "
        "one bare repository per remote.",
        "- Both: the same OpenSSH client, key and options, git protocol v0. Negotiated "
        f"with sshd: {plain.negotiated or 'n/a'}; with Opus: {opus.negotiated or 'n/a'}. "
        "Clones are `--no-checkout` (the checkout is the same client work for both).",
        f"- Versions: dulwich {info['dulwich']}, paramiko {info['paramiko']}, "
        f"git {info['git']}, Python {info['python']}.",
        "",
        f"Goals: push ≤ {GOALS['push']}x C git (full and incremental), clone ≤ "
        f"{GOALS['clone']}x (clone and fetch), {PARALLEL} simultaneous pushes ≤ "
        f"{GOALS['parallel']}x one push. The {PARALLEL} pushing clients share the "
        f"machine's {os.cpu_count()} cores with the server, so C git's own parallel "
        "ratio is the floor this machine allows.",
        "",
        tables(plain, opus),
        "",
    ]
    if errors:
        parts += ["## Errors in this run", "", *errors]
    return "\n".join(parts)


def as_json(source: Source, plain: Figures, opus: Figures, info: dict[str, str],
            when: str, load: float) -> dict[str, object]:
    def server(figures: Figures) -> dict[str, object]:
        return {
            "seconds": figures.seconds,
            "median_seconds": {key: figures.median(key) for key, _, _ in MEASURES},
            "parallel_over_one_push": parallel_ratio(figures),
            "remote_bytes_after_full_push": figures.remote_bytes,
            "ssh_algorithms": figures.negotiated,
            "error": figures.error,
            "stderr_first_run": figures.stderr,
        }

    return {
        "date": when,
        "versions": info,
        "cpus": os.cpu_count(),
        "load_average_at_start": load,
        "repository": {"files": source.files, "content_bytes": source.content_bytes,
                       "changed_files": CHANGED_FILES, "seed": SEED},
        "goals": GOALS,
        "openssh": server(plain),
        "opus": {**server(opus), "sshd_log_unusual_lines": opus.server_log},
        "ratios_opus_over_openssh": {key: ratio(opus.median(key), plain.median(key))
                                     for key, _, _ in MEASURES},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=RUNS)
    parser.add_argument("--files", type=int, default=FILES)
    parser.add_argument("--megabytes", type=float, default=MEGABYTES)
    parser.add_argument("--budget", type=float, default=BUDGET_SECONDS,
                        help="seconds per group of repeats before it stops repeating")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="opus-git-speed-"))
    work.chmod(0o755)
    try:
        key = make_key(work, "bench")
        started = time.monotonic()
        source = make_source(work / "source", args.files, int(args.megabytes * 1e6),
                             client_env(key))
        print(f"generated {source.files:,} files, {source.content_bytes / 1e6:.0f} MB "
              f"in {time.monotonic() - started:.0f} s", flush=True)
        ensure_openssh_server()
        with openssh_server(work / "sshd", key) as sshd_port, running_opus(key) as running:
            targets = [openssh_target(work, sshd_port, client_env(key)), opus_target(running)]
            measure_all(targets, source, work, key, args.runs, args.budget)
            plain, opus = (target.figures for target in targets)
            opus.server_log = unusual_log_lines(running.home / "logs" / "opus-sshd.log")
        print(f"measured in {time.monotonic() - started:.0f} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    info = versions()
    text = document(source, plain, opus, info, when, load)
    print(text)
    if opus.server_log:
        print("Opus sshd log, lines other than routine INFO:", *opus.server_log, sep="\n")
    DOC.write_text(text)
    JSON_OUT.parent.mkdir(exist_ok=True)
    JSON_OUT.write_text(json.dumps(as_json(source, plain, opus, info, when, load), indent=2) + "\n")
    print(f"wrote {DOC.relative_to(CHECKOUT)} and {JSON_OUT.relative_to(CHECKOUT)}")


if __name__ == "__main__":
    main()
