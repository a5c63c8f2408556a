"""System mode: `opus install --system`, `opus uninstall --system`, and the part of
`opus up --system` that needs root (supervisord, which starts the apps as their users,
and the front's master, which binds port 80).

What root sets up once: the `opus` user (Opus runs as it) and the front's user; Opus
installed into a virtualenv every user can run (pyenv's interpreter under /root is
not); secureops, root-owned, with its config and the one sudoers rule that lets `opus`
run it; OPUS_HOME (the opus user's), /etc/opus (supervisor's and the front's config,
root's alone) and /var/log/opus (root's, read by the opus group); a systemd unit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import grp
import json
import os
import pwd
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from opus_paas import names, redact, supervisor
from opus_paas import settings as settings_module
from opus_paas.build import buildpack
from opus_paas.control import leftovers
from opus_paas.errors import ServiceError, UsageError
from opus_paas.paths import shipped
from opus_paas.settings import (
    SECUREOPS,
    SYSTEM_CONFIG_DIR,
    SYSTEM_LOGS_DIR,
    SYSTEM_PYTHONS_DIR,
    SYSTEM_WHEELS_DIR,
    Settings,
)

PREFIX = Path("/usr/local/lib/opus")
VENV = PREFIX / "venv"
PYTHON = VENV / "bin" / "python"
SECUREOPS_LIB = PREFIX / "secureops"          # holds the secureops package
LAYOUT = SYSTEM_CONFIG_DIR / "secureops.json"
SUDOERS = Path("/etc/sudoers.d/opus")
UNIT = Path("/etc/systemd/system/opus.service")
OPUS_LINK = Path("/usr/local/bin/opus")
HOST_PYTHON = Path("/usr/bin/python3")
RUNUSER = "/usr/sbin/runuser"
# nftables keeps each app's loopback ports its own (secureops/firewall.py renders the
# table at each front-install); uninstall drops the table.
NFT = Path("/usr/sbin/nft")
NFT_TABLE = ("inet", "opus")
DEFAULT_HOME = Path("/var/lib/opus")
SYSTEM_DEFAULTS = {"http_host": "0.0.0.0", "http_port": "80", "ssh_host": "0.0.0.0"}


@dataclasses.dataclass(frozen=True)
class Plan:
    """What `opus install --system` sets up (pure: chosen from its options)."""

    home: Path
    user: str
    settings: dict[str, str]      # written to OPUS_HOME/opus.toml

    @property
    def front_user(self) -> str:
        return f"{self.user}-front"


def plan(home: Path, user: str, pairs: list[str]) -> Plan:
    """Check install's options: a plain absolute home, a user name, KEY=VALUE settings
    Opus knows (checked as opus.toml's are)."""
    if not home.is_absolute() or ".." in home.parts or any(c in str(home) for c in '"\n\\'):
        raise UsageError(f"--home {home} must be a plain absolute path")
    if not names.USER_NAME.fullmatch(user) or user.startswith("opus-"):
        raise UsageError(f"--user {user!r} is not a user name Opus can use (lower case, "
                         "not opus-…, which names the apps' users)")
    values = dict(SYSTEM_DEFAULTS)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key in ("mode", "system_user"):
            raise UsageError(f"--set {pair!r}: give KEY=VALUE, KEY a setting other than "
                             "mode and system_user")
        values[key] = value
    values.update(mode="system", system_user=user)
    settings_module.load({"OPUS_HOME": str(home),
                          **{f"OPUS_{k.upper()}": v for k, v in values.items()}})
    return Plan(home, user, values)


def _require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise UsageError(f"{what} needs root; run it with sudo")


def _run(argv: list[str], what: str, env: Mapping[str, str] | None = None) -> None:
    clean = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    done = subprocess.run(argv, capture_output=True, text=True, check=False,
                          env=dict(env) if env is not None else clean)
    if done.returncode != 0:
        raise ServiceError(f"{what} failed: {(done.stderr or done.stdout).strip()[-400:]}")


def _exists(lookup: Callable[[str], object], name: str) -> bool:
    """Whether pwd.getpwnam or grp.getgrnam knows `name`."""
    try:
        lookup(name)
    except KeyError:
        return False
    return True


# ---- install ----------------------------------------------------------------------------

def install(home: Path, user: str, pairs: list[str]) -> list[str]:
    """Set up system mode (again: brings an installation up to date); return next steps."""
    _require_root("opus install --system")
    chosen = plan(home, user, pairs)
    refuse_foreign_home(chosen)
    if not shutil.which("sudo"):
        raise UsageError("sudo is not installed; install it (apt-get install sudo): the opus "
                         "user reaches secureops through one sudoers rule")
    if not NFT.exists():
        raise UsageError("nftables is not installed; install it (apt-get install nftables): "
                         "system mode keeps each app's ports to the app's own user with it")
    _make_users(chosen)
    # Root's own word for what root acts on (the secureops config is not written yet).
    settings = settings_module.load({"OPUS_HOME": str(chosen.home), "OPUS_MODE": "system",
                                     "OPUS_SYSTEM_USER": chosen.user})
    make_system_dirs(settings)
    _write_config(chosen)
    _install_venv()
    _install_secureops(chosen, settings)
    _install_unit(chosen)
    _disable_distro_apache()
    if not OPUS_LINK.exists():
        OPUS_LINK.symlink_to(VENV / "bin" / "opus")
    return [
        f"Opus is installed in system mode (OPUS_HOME={chosen.home}, user {chosen.user}).",
        "",
        "Start it:",
        "  systemctl start opus          (with systemd)",
        f"  OPUS_HOME={chosen.home} opus up --system    (without)",
        "Then register a key: opus keys:add admin ~/.ssh/id_ed25519.pub",
    ]


def refuse_foreign_home(chosen: Plan) -> None:
    """A home that holds an Opus which is not this system installation's (an embedded
    one, as the README's first command makes as root) is refused before anything
    changes: system mode would run it as another user, and does not take one over."""
    database = chosen.home / "opus.db"
    try:
        owner = database.stat().st_uid
    except FileNotFoundError:
        return
    if _exists(pwd.getpwnam, chosen.user) and owner == pwd.getpwnam(chosen.user).pw_uid:
        return          # this installation's own home (installing again, or kept)
    count = _count_apps(database)
    raise UsageError(
        f"{chosen.home} holds an embedded Opus ({count} app{'s' if count != 1 else ''}, "
        f"its files {_user_of(owner)}'s), "
        "which system mode does not take over; nothing was changed. Either install system "
        f"mode into a home of its own (opus install --system --home {chosen.home}-system) "
        "and push your apps to it, or stop the embedded Opus "
        f"(OPUS_HOME={chosen.home} opus down), move {chosen.home} aside, and install again")


def _count_apps(database: Path) -> int:
    try:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
            return int(db.execute("SELECT COUNT(*) FROM apps").fetchone()[0])
    except sqlite3.Error:
        return 0


def _user_of(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _make_users(chosen: Plan) -> None:
    nologin = "/usr/sbin/nologin"
    if not _exists(pwd.getpwnam, chosen.front_user):
        _run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir",
              "/nonexistent", "--shell", nologin, chosen.front_user], "making the front's user")
    if not _exists(pwd.getpwnam, chosen.user):
        # Opus reads the slugs it builds (group: the front's) but no app's own files.
        _run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir",
              str(chosen.home), "--shell", nologin, "--groups", chosen.front_user,
              chosen.user], "making the opus user")


def _write_config(chosen: Plan) -> None:
    """OPUS_HOME/opus.toml (the opus user's) with the mode and the chosen settings;
    make_system_dirs made the home."""
    entry = pwd.getpwnam(chosen.user)
    lines = [f"{key} = {json.dumps(value)}" for key, value in sorted(chosen.settings.items())]
    text = "# Written by opus install --system.\n" + "\n".join(lines) + "\n"
    # The home is the opus user's: root writes there only through descriptors, a fresh
    # file of its own renamed over the old one (a link planted there is replaced, never
    # followed).
    home = os.open(chosen.home, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        tmp = f".opus.toml.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644,
                     dir_fd=home)
        with os.fdopen(fd, "w") as out:
            out.write(text)
            os.fchown(out.fileno(), entry.pw_uid, entry.pw_gid)
        os.rename(tmp, "opus.toml", src_dir_fd=home, dst_dir_fd=home)
    finally:
        os.close(home)


def make_system_dirs(settings: Settings) -> None:
    """Root's directories (config and logs), Opus's home; each owner and mode set."""
    opus = pwd.getpwnam(settings.system_user)
    for path in [settings.home, *settings.home.parents]:
        if path.exists() and not path.stat().st_mode & 0o001:
            raise UsageError(f"{path} is not traversable by other users; the apps' users "
                             "must reach their directories: choose another --home")
    for path, owner, group, mode in [
        (SYSTEM_CONFIG_DIR, 0, 0, 0o755),
        (settings.supervisor_dir, 0, 0, 0o755),
        (settings.supervisor_dir / "conf.d", 0, 0, 0o755),
        (settings.front_dir, 0, 0, 0o755),
        (settings.front_dir / "run", 0, 0, 0o755),
        (SYSTEM_LOGS_DIR, 0, opus.pw_gid, 0o750),
        (SYSTEM_LOGS_DIR / "front", 0, opus.pw_gid, 0o750),
        (settings.home, opus.pw_uid, opus.pw_gid, 0o755),
    ]:
        path.mkdir(parents=True, exist_ok=True)
        if path.is_symlink():
            raise ServiceError(f"{path} is a symlink; remove it and install again")
        os.chown(path, owner, group)
        path.chmod(mode)


def _install_venv() -> None:
    """Opus, installed from this copy into a virtualenv every user can run."""
    if not HOST_PYTHON.exists():
        raise UsageError("Debian's python3 is missing; install it (apt-get install python3 "
                         "python3-dev python3-venv)")
    uv = str(buildpack.find_uv())
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(Path.home()),
           "UV_NATIVE_TLS": "1",    # the host's CA store, as builds use
           **{k: v for k, v in os.environ.items() if k in settings_module.NETWORK_VARS}}
    PREFIX.mkdir(parents=True, exist_ok=True)
    PREFIX.chmod(0o755)
    if not PYTHON.exists():
        _run([uv, "venv", "--quiet", "--python", str(HOST_PYTHON), str(VENV)],
             "making Opus's virtualenv", env)
    source = shipped("buildpacks").parent
    if not (source / "pyproject.toml").exists():
        raise UsageError("opus install --system installs from a checkout of Opus; run it "
                         "from one (python3 -m opus_paas install --system)")
    _run([uv, "pip", "install", "--quiet", "--python", str(PYTHON), "--reinstall-package",
          "opus-paas", str(source)], "installing Opus into its virtualenv", env)
    _run(["chmod", "-R", "a+rX,go-w", str(PREFIX)], "opening Opus's virtualenv to its users")


def _install_secureops(chosen: Plan, settings: Settings) -> None:
    """The helper root-owned (its package, its entry point), its config, the sudoers
    rule that lets the opus user run it and nothing else."""
    package = SECUREOPS_LIB / "secureops"
    fresh = SECUREOPS_LIB / ".secureops.new"
    shutil.rmtree(fresh, ignore_errors=True)
    shutil.copytree(shipped("buildpacks").parent / "secureops", fresh,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "sudoers", "*.md"))
    shutil.rmtree(package, ignore_errors=True)
    os.replace(fresh, package)
    # Steps run under the process-tree guard (secureops/verbs.py: _guarded).
    shutil.copyfile(shipped("buildpacks") / "python" / "lib" / "runtime" / "opus_runtime" /
                    "guard.py", SECUREOPS_LIB / "opus_guard.py")
    _run(["chown", "-R", "root:root", str(SECUREOPS_LIB)], "owning secureops")
    _run(["chmod", "-R", "u=rwX,go=rX", str(SECUREOPS_LIB)], "securing secureops")
    _write_root_file(SECUREOPS, 0o755, "\n".join([
        f"#!{HOST_PYTHON} -I",
        "# Installed by opus install --system: the one door from the opus user to root.",
        "import sys",
        f"sys.path.insert(0, {str(SECUREOPS_LIB)!r})",
        "from secureops.cli import main",
        "sys.exit(main(sys.argv[1:]))",
        ""]))
    _write_root_file(LAYOUT, 0o644, json.dumps({
        "home": str(chosen.home), "conf_d": str(settings.supervisor_dir / "conf.d"),
        "front": str(settings.front_dir), "logs": str(SYSTEM_LOGS_DIR),
        "log": str(SYSTEM_LOGS_DIR / "secureops.log"), "front_user": chosen.front_user,
        "front_group": chosen.front_user, "opus_group": chosen.user,
        "pythons": str(SYSTEM_PYTHONS_DIR), "wheels": str(SYSTEM_WHEELS_DIR)},
        indent=1) + "\n")
    rule = sudoers_rule(chosen.user)
    candidate = SUDOERS.with_name(".opus.new")
    _write_root_file(candidate, 0o440, rule)
    try:
        _run(["visudo", "-c", "-q", "-f", str(candidate)], "checking the sudoers rule")
    except ServiceError:
        candidate.unlink()
        raise
    os.replace(candidate, SUDOERS)


def sudoers_rule(user: str) -> str:
    """The one rule (pure): `user` may run secureops as root, nothing else, with sudo's
    reset environment."""
    return (f"# Written by opus install --system: {user} may run secureops, nothing else.\n"
            f"Defaults!{SECUREOPS} env_reset, !setenv\n"
            f"{user} ALL=(root) NOPASSWD: {SECUREOPS}\n")


def _write_root_file(path: Path, mode: int, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.chown(tmp, 0, 0)
    tmp.chmod(mode)
    os.replace(tmp, path)


def unit_text(home: Path) -> str:
    """The systemd unit (pure): `opus up --system` starts supervisord, which keeps the
    rest alive; `opus down` stops everything. If supervisord dies, systemd ends every
    process left in the unit's control group and starts Opus again (whose `opus up`
    ends any half-done deploy)."""
    opus = VENV / "bin" / "opus"
    return "\n".join([
        "[Unit]",
        "Description=Opus, a self-hosted platform for Python web projects",
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=forking",
        f"PIDFile={SYSTEM_CONFIG_DIR / 'supervisor' / 'supervisord.pid'}",
        f"Environment=OPUS_HOME={home}",
        f"ExecStart={opus} up --system",
        f"ExecStop={opus} down",
        "KillMode=control-group",
        "PrivateTmp=yes",          # Opus and its apps never see the host's /tmp
        "Restart=on-failure",      # `opus down` is a clean exit: it stays down
        "RestartSec=2",
        "TimeoutStartSec=300",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ])


def _systemd() -> bool:
    return Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None


def _install_unit(chosen: Plan) -> None:
    _write_root_file(UNIT, 0o644, unit_text(chosen.home))
    if _systemd():
        _run(["systemctl", "daemon-reload"], "reloading systemd")
        _run(["systemctl", "enable", "opus.service"], "enabling opus.service")


def _disable_distro_apache() -> None:
    """Debian's own apache2 service would hold port 80: stop it and keep it off."""
    if _systemd():
        found = subprocess.run(["systemctl", "list-unit-files", "apache2.service"],
                               capture_output=True, text=True, check=False)
        if "apache2.service" in found.stdout:
            _run(["systemctl", "disable", "--now", "apache2.service"], "disabling apache2")
    elif Path("/etc/init.d/apache2").exists():
        subprocess.run(["/etc/init.d/apache2", "stop"], capture_output=True, check=False)
        if shutil.which("update-rc.d"):
            subprocess.run(["update-rc.d", "apache2", "disable"], capture_output=True,
                           check=False)


# ---- uninstall --------------------------------------------------------------------------

def uninstall(settings: Settings, purge: bool) -> list[str]:
    """Undo install: stop everything, remove the apps' users, secureops, its rule, the
    unit, root's config and Opus's virtualenv. With `purge`, also OPUS_HOME, the logs
    and the opus and front users; otherwise the apps' data stays."""
    _require_root("opus uninstall --system")
    if not settings.system:
        raise UsageError(f"{settings.home} is not a system-mode Opus; set OPUS_HOME to "
                         "the one to uninstall")
    sup = supervisor.Supervisor(settings)
    if sup.is_running():
        sup.shutdown()
    if _systemd() and UNIT.exists():
        subprocess.run(["systemctl", "disable", "opus.service"], capture_output=True,
                       check=False)
    removed_users = []
    for entry in pwd.getpwall():
        if entry.pw_name.startswith("opus-") and \
                Path(entry.pw_dir).parent == settings.apps_dir:
            _kill_processes_of(entry.pw_uid)     # a one-off `opus run`, say
            _run(["userdel", entry.pw_name], f"removing user {entry.pw_name}")
            removed_users.append(entry.pw_name)
    for path in (SUDOERS, SECUREOPS, LAYOUT, UNIT):
        path.unlink(missing_ok=True)
    remove_port_rules()
    if OPUS_LINK.is_symlink() and OPUS_LINK.readlink() == VENV / "bin" / "opus":
        OPUS_LINK.unlink()
    for directory in (SECUREOPS_LIB, VENV, settings.supervisor_dir, settings.front_dir):
        shutil.rmtree(directory, ignore_errors=True)
    lines = [f"Opus is uninstalled; removed the apps' users: {', '.join(removed_users) or 'none'}."]
    if purge:
        users = [n for n in (settings.system_user, settings.front_user)
                 if _exists(pwd.getpwnam, n)]
        for name in users:      # nothing of theirs may run while their files go
            _kill_processes_of(pwd.getpwnam(name).pw_uid)
        shutil.rmtree(settings.home, ignore_errors=True)
        shutil.rmtree(SYSTEM_LOGS_DIR, ignore_errors=True)
        for directory in (SYSTEM_PYTHONS_DIR, SYSTEM_WHEELS_DIR):   # the apps' are gone
            shutil.rmtree(directory, ignore_errors=True)
        for name in (settings.system_user, settings.front_user):
            if name in users:
                _run(["userdel", name], f"removing user {name}")
            if _exists(grp.getgrnam, name):
                subprocess.run(["groupdel", name], capture_output=True, check=False)
        lines.append(f"Purged {settings.home}, {SYSTEM_LOGS_DIR}, the fetched interpreters "
                     f"and the users {settings.system_user}, {settings.front_user}.")
    else:
        lines.append(f"Kept {settings.home} (apps, data, database), {SYSTEM_LOGS_DIR} and the "
                     f"interpreters the apps were built on ({SYSTEM_PYTHONS_DIR}); "
                     "`opus uninstall --system --purge` removes them too.")
    for directory in (SYSTEM_CONFIG_DIR, PREFIX):
        if directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()
    return lines


def remove_port_rules() -> None:
    """Drop the nftables table that guards the apps' ports (none there: nothing to do)."""
    if NFT.exists():
        subprocess.run([str(NFT), "delete", "table", *NFT_TABLE], capture_output=True,
                       check=False, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})


def _kill_processes_of(uid: int, wait: float = 10.0) -> None:
    """SIGKILL every process of `uid` and wait until they are gone (supervisord has
    stopped its programs already; what is left was started otherwise)."""
    deadline = time.monotonic() + wait
    while True:
        pids = [int(p.name) for p in Path("/proc").iterdir()
                if p.name.isdigit() and _owner(p) == uid]
        if not pids or time.monotonic() > deadline:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def _owner(proc: Path) -> int | None:
    try:
        return proc.stat().st_uid
    except OSError:
        return None


# ---- up --system --------------------------------------------------------------------------

def up(settings: Settings, own_programs: list[supervisor.Program]) -> list[str]:
    """Root's part of `opus up --system`: supervisord running with Opus's own programs;
    then the rest of `opus up` as the opus user. Returns what that printed."""
    _require_root("opus up --system")
    if not settings.system or not LAYOUT.exists() or not PYTHON.exists():
        raise UsageError("Opus is not installed in system mode here; run "
                         "`opus install --system` first (or set OPUS_HOME to its home)")
    make_system_dirs(settings)
    sup = supervisor.Supervisor(settings)
    sup.write_programs("opus", own_programs)
    report: list[str] = []
    if sup.is_running():
        sup.apply()
    else:
        report = leftovers.end(settings)   # root sees (and may end) every user's process
        leftovers.forget_front_pid(settings)
        sup.start()
    done = subprocess.run(
        [RUNUSER, "-u", settings.system_user, "--", str(PYTHON), "-I", "-m", "opus_paas",
         "up"],
        capture_output=True, text=True, check=False, cwd="/",
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
             "OPUS_HOME": str(settings.home), "HOME": str(settings.home)})
    if done.returncode != 0:
        raise ServiceError(f"`opus up` as {settings.system_user} failed: "
                           f"{(done.stderr or done.stdout).strip().removeprefix('opus: ')}")
    return [*report, *done.stdout.splitlines()]


def as_system_user(settings: Settings, argv: list[str]) -> int:
    """Run an `opus` command as the opus user (root's commands in system mode: what
    they write must stay the opus user's), isolated (-I, from /: no module of the
    directory root stands in is imported). A key file root names is read by root."""
    stdin_text = None
    if argv[:1] == ["keys:add"] and len(argv) == 3 and argv[2] != "-":
        try:
            stdin_text = Path(argv[2]).read_text()[:64 * 1024]
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read {argv[2]}: {exc}; give the path of a .pub "
                             "file, or - to read the key from standard input") from None
        argv = [*argv[:2], "-"]
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
           "OPUS_HOME": str(settings.home), "HOME": str(settings.home)}
    if redact.command_line(argv) != argv:
        # A secret among the words (pg:psql -c SQL, config values): every local user reads
        # a process's arguments, only its owner its environment.
        env[ARGV_VARIABLE] = json.dumps(argv)
        argv = [ARGV_FROM_ENVIRONMENT]
    return subprocess.run(
        [RUNUSER, "-u", settings.system_user, "--", str(PYTHON), "-I", "-m", "opus_paas",
         *argv], check=False, cwd="/", input=stdin_text, text=stdin_text is not None,
        env=env).returncode


# How as_system_user hands over words that must not be in a process's arguments.
ARGV_FROM_ENVIRONMENT = "--argv-from-environment"
ARGV_VARIABLE = "OPUS_ARGV"


def handed_over_argv(args: list[str]) -> list[str]:
    """The words as_system_user put in the environment, taken out of it; else `args`."""
    if args != [ARGV_FROM_ENVIRONMENT] or ARGV_VARIABLE not in os.environ:
        return args
    try:
        words = json.loads(os.environ.pop(ARGV_VARIABLE))
    except ValueError:
        words = None
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise UsageError(f"{ARGV_VARIABLE} must hold a JSON list of words")
    return words


def python_for_programs(settings: Settings) -> str:
    """The interpreter Opus's own programs run with: the system virtualenv's in system
    mode (the opus user can run it), this one otherwise."""
    return str(PYTHON) if settings.system else sys.executable
