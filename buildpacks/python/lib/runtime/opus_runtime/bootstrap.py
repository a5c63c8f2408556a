"""What :mod:`opus_runtime.wsgi` does before importing the app, testable without importing it."""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, MutableMapping
from typing import Any


def load_env_file(path: str) -> dict[str, str]:
    """The config vars in a JSON file holding one object of strings to strings."""
    with open(path, encoding="utf-8") as file:
        data: Any = json.load(file)
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and k and "=" not in k and "\0" not in k + v
        for k, v in data.items()
    ):
        raise RuntimeError(
            f"OPUS_ENV_FILE {path} must hold a JSON object of strings to strings; rewrite it."
        )
    return {str(k): str(v) for k, v in data.items()}


def prepare(environ: MutableMapping[str, str], path: list[str]) -> tuple[str, str]:
    """Apply ``OPUS_ENV_FILE``, put ``OPUS_APP_ROOT`` first on ``path``, route a Django app's
    settings through the overlay; return the module and the name of the callable to serve
    (``OPUS_WSGI_CALLABLE``, ``application`` by default).
    """
    env_file = environ.get("OPUS_ENV_FILE")
    if env_file:
        environ.update(load_env_file(env_file))
    app_root = environ.get("OPUS_APP_ROOT")
    if app_root:
        while app_root in path:
            path.remove(app_root)
        path.insert(0, app_root)
    if environ.get("OPUS_USER_SETTINGS_MODULE"):
        environ["DJANGO_SETTINGS_MODULE"] = "opus_runtime.settings"
    module = environ.get("OPUS_WSGI_MODULE")
    if not module:
        raise RuntimeError("OPUS_WSGI_MODULE is not set: set it to the app's WSGI module.")
    return module, environ.get("OPUS_WSGI_CALLABLE") or "application"


def process_environment(environ: MutableMapping[str, str], **extra: str) -> dict[str, str]:
    """The environment of a Procfile process: `environ` with the release's
    ``OPUS_ENV_FILE`` applied and `extra` (``PORT``, ``DYNO``) on top."""
    env = dict(environ)
    if env.get("OPUS_ENV_FILE"):
        env.update(load_env_file(env["OPUS_ENV_FILE"]))
    env.update(extra)
    return env


def gunicorn_cmd_args(environ: Mapping[str, str], port: str) -> str:
    """``GUNICORN_CMD_ARGS`` for a web command run as written: ``--bind=127.0.0.1:PORT``
    first, so a gunicorn without ``-b`` listens on loopback, behind the front (with
    ``$PORT`` set, gunicorn's own default is 0.0.0.0:$PORT, every interface). The app's
    own value follows; one that binds somewhere itself is left as it is, and so is a
    ``-b`` on the command line, which gunicorn puts over both."""
    own = environ.get("GUNICORN_CMD_ARGS", "")
    try:
        words = shlex.split(own)
    except ValueError:
        return own          # gunicorn will say what is wrong with it
    if any(_names_bind(word) for word in words):
        return own
    return " ".join([f"--bind=127.0.0.1:{port}", own]).strip()


def _names_bind(word: str) -> bool:
    """``-b``, ``-bHOST``, ``--bind``/``--bind=…`` and argparse's abbreviations of it."""
    name = word.split("=", 1)[0]
    return (word.startswith("-b") and not word.startswith("--")) or \
        (len(name) >= 4 and "--bind".startswith(name))
