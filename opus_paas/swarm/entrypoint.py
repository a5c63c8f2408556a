"""The entry point of every release image (copied into the base as /opus/entrypoint.py
and run by Debian's Python with -I; stdlib only, it imports nothing from Opus).

    entrypoint.py [PROCESS_TYPE]          (default: web)
    entrypoint.py --run COMMAND           (a one-off: the release command)

It runs the Procfile's process for PROCESS_TYPE with PORT = OPUS_PORT_BASE + OPUS_SLOT - 1
(the service sets `--env OPUS_SLOT={{.Task.Slot}}`), and the app's config vars read from
the JSON file OPUS_CONFIG_FILE names (a Docker secret, so they never show in `docker
inspect`). `web` without a Procfile web: line is gunicorn (shipped in the base under
/opus/site) serving opus_runtime.wsgi, the same WSGI entry mod_wsgi-express serves on
one host; a Procfile line runs under bash, as on one host and on Heroku. `--run`
runs COMMAND under bash with the same environment (DYNO=release.1).
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Mapping

APP = "/app"
VENV = "/app/.opus/venv"
BUILD_INFO = "/app/.opus/build.json"
SITE = "/opus/site"                 # gunicorn, from Opus's own environment
BASH = "/bin/bash"
CA_FILE = "/etc/ssl/certs/ca-certificates.crt"
CONFIG_ENV = "OPUS_CONFIG_FILE"
TMP = "/tmp"  # noqa: S108 (the task's own tmpfs: the root is read-only)
# Never taken from the app's config: they would change what runs, not how.
UNSAFE = frozenset({"PATH", "LD_PRELOAD", "LD_LIBRARY_PATH", "PYTHONHOME", "PYTHONPATH",
                    "PYTHONSTARTUP", "PYTHONINSPECT", "VIRTUAL_ENV", "HOME", "TMPDIR",
                    "OPUS_ENV_FILE", CONFIG_ENV})
MAX_PROCESSES = 64
RUN = "--run"                       # entrypoint.py --run COMMAND: a one-off
MAX_THREADS = 64


class EntrypointError(Exception):
    pass


def slot_port(environ: Mapping[str, str]) -> int:
    """OPUS_PORT_BASE + OPUS_SLOT - 1: task slot N of a service listens on base + N - 1,
    so two tasks of one service on a node never share a port."""
    try:
        base, slot = int(environ["OPUS_PORT_BASE"]), int(environ["OPUS_SLOT"])
    except KeyError as exc:
        raise EntrypointError(f"{exc.args[0]} is not set: the service must set OPUS_PORT_BASE "
                              "and OPUS_SLOT={{.Task.Slot}}") from None
    except ValueError:
        raise EntrypointError("OPUS_PORT_BASE and OPUS_SLOT must be whole numbers") from None
    if slot < 1 or not 1024 <= base + slot - 1 <= 65535:
        raise EntrypointError(f"slot {slot} on port base {base} gives no usable port "
                              "(1024-65535)")
    return base + slot - 1


def load_config(path: str) -> dict[str, str]:
    """The app's config vars: a JSON object of strings to strings."""
    with open(path, encoding="utf-8") as file:
        data = json.load(file)
    if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and k and "=" not in k
            and "\0" not in k + v for k, v in data.items()):
        raise EntrypointError(f"{path} must hold a JSON object of strings to strings")
    return dict(data)


def task_environment(config: Mapping[str, str], environ: Mapping[str, str],
                     ptype: str, port: int) -> dict[str, str]:
    """The process's environment: the app's config, then what the image decides (paths
    inside the image: the config was written for the Opus host's layout)."""
    env = {k: v for k, v in config.items() if k not in UNSAFE}
    env.setdefault("LANG", "C.UTF-8")
    env.update({
        "PATH": f"{VENV}/bin:/usr/bin:/bin",
        "VIRTUAL_ENV": VENV,
        "HOME": TMP,
        "TMPDIR": TMP,
        "XDG_CACHE_HOME": f"{TMP}/.cache",
        "PYTHONUNBUFFERED": "1",
        "SSL_CERT_FILE": CA_FILE,
        "OPUS_APP_ROOT": APP,
        "OPUS_STATIC_ROOT": f"{APP}/.opus/static",
        # A pinned app's data directory is mounted by its service; elsewhere none.
        "OPUS_DATA_DIR": environ.get("OPUS_DATA_DIR") or "/data",
        "PORT": str(port),
        "DYNO": f"{ptype}.{environ.get('OPUS_SLOT', '1')}",
    })
    for key in ("OPUS_SLOT", "OPUS_PORT_BASE"):
        if key in environ:
            env[key] = environ[key]
    return env


def _bounded(environ: Mapping[str, str], key: str, default: int, most: int) -> int:
    value = environ.get(key, "")
    if not value:
        return default
    if not value.isdigit() or not 1 <= int(value) <= most:
        raise EntrypointError(f"{key} must be a number from 1 to {most}")
    return int(value)


def command(ptype: str, build_info: Mapping[str, object], environ: Mapping[str, str],
            port: int) -> tuple[list[str], dict[str, str]]:
    """The argv to exec for `ptype`, and what to add to its environment."""
    # Host network: the front reaches the task from another machine.
    bind = environ.get("OPUS_BIND") or "0.0.0.0"
    raw_types = build_info.get("process_types")
    types = {str(k): str(v) for k, v in raw_types.items()} \
        if isinstance(raw_types, dict) else {}
    web_command = build_info.get("web_command")
    if ptype == "web" and web_command:
        types["web"] = str(web_command)
    if ptype in types:
        extra = {}
        if ptype == "web":
            own = environ.get("GUNICORN_CMD_ARGS", "")
            binds = any(w.startswith(("-b", "--bind", "--b")) for w in _words(own))
            extra["GUNICORN_CMD_ARGS"] = own if binds else \
                f"--bind={bind}:{port} {own}".strip()
        return [BASH, "-c", types[ptype]], extra
    if ptype != "web":
        raise EntrypointError(f"the Procfile has no {ptype!r} process type "
                              f"(it has: {', '.join(sorted(types)) or 'none'})")
    processes = _bounded(environ, "OPUS_WEB_PROCESSES", 1, MAX_PROCESSES)
    threads = _bounded(environ, "OPUS_WEB_THREADS", 5, MAX_THREADS)
    return [f"{VENV}/bin/python", "-m", "gunicorn", "--bind", f"{bind}:{port}",
            "--workers", str(processes), "--worker-class", "gthread",
            "--threads", str(threads), "--worker-tmp-dir", TMP, "--chdir", APP,
            "--access-logfile", "-", "--error-logfile", "-", "--graceful-timeout", "10",
            "opus_runtime.wsgi:application"], {"PYTHONPATH": SITE}


def _words(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError:
        return text.split()


def main(argv: list[str], environ: Mapping[str, str]) -> int:
    one_off = len(argv) == 2 and argv[0] == RUN
    ptype = "release" if one_off else argv[0] if argv else "web"
    try:
        if len(argv) > 1 and not one_off:
            raise EntrypointError(f"usage: entrypoint.py [PROCESS_TYPE] | {RUN} COMMAND")
        # A job's task may have no slot; its PORT is the block's first (nothing listens).
        port = slot_port(environ) if not one_off else \
            slot_port({**environ, "OPUS_SLOT": "1"})
        config_file = environ.get(CONFIG_ENV)
        config = load_config(config_file) if config_file else {}
        with open(BUILD_INFO, encoding="utf-8") as file:
            build_info = json.load(file)
        env = task_environment(config, environ, ptype, port)
        argv_out, extra = ([BASH, "-c", argv[1]], {}) if one_off else \
            command(ptype, build_info, {**config, **environ}, port)
    except (EntrypointError, OSError, ValueError) as exc:
        print(f"opus entrypoint: {exc}", file=sys.stderr, flush=True)
        return 2
    env.update(extra)
    os.chdir(APP)
    os.execve(argv_out[0], argv_out, env)  # noqa: S606
    return 0   # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], os.environ))
