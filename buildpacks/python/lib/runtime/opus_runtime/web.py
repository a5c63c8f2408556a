"""Runs a Procfile ``web:`` command as written (an ASGI server, say): applies the release's
``OPUS_ENV_FILE`` and hands the command to bash, as Heroku does, with ``$PORT`` set
(and ``GUNICORN_CMD_ARGS`` binding gunicorn to 127.0.0.1:$PORT unless the app binds).

Usage: ``python -m opus_runtime.web PORT COMMAND``
"""

from __future__ import annotations

import os
import sys

from opus_runtime import guard
from opus_runtime.bootstrap import gunicorn_cmd_args, process_environment


def main(argv: list[str]) -> None:
    if len(argv) != 2 or not argv[0].isdigit():
        sys.exit("usage: python -m opus_runtime.web PORT COMMAND")
    env = process_environment(os.environ, PORT=argv[0])
    # gunicorn run as written listens on loopback unless told otherwise (its default
    # with $PORT set is every interface, around the front).
    env["GUNICORN_CMD_ARGS"] = gunicorn_cmd_args(env, argv[0])
    if env.get("OPUS_APP_ROOT"):
        os.chdir(env["OPUS_APP_ROOT"])
    # The Procfile line is shell syntax on Heroku too: bash runs it, as the app user,
    # with default signals (this Python ignores SIGPIPE, which exec would pass on).
    guard.default_signals()
    os.execve("/bin/bash", ["bash", "-c", argv[1]], env)  # noqa: S606


if __name__ == "__main__":
    main(sys.argv[1:])
