"""The Procfile (Heroku's format) and what its ``web:`` line means for serving (pure).

``parse`` gives ``{type: command}`` or a BuildError naming the line. ``wsgi_target``
reads a ``web:`` command that runs a known WSGI server (gunicorn, uwsgi, waitress-serve,
mod_wsgi-express) and returns the module and callable it serves, so Opus can serve that
same target under mod_wsgi; any other command runs as written. A uwsgi command that
names an ini file (``uwsgi ./etc/uwsgi.ini``, ``--ini FILE[:SECTION]``) is read through
the ``read`` function given (the caller does the I/O), with ``uwsgi_ini``.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from opus_buildpack.errors import BuildError

LINE = re.compile(r"([A-Za-z0-9_-]+)\s*:\s*(.*)\Z")
MAX_TYPE = 63
DOTTED = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
TARGET = re.compile(rf"({DOTTED})(?::([A-Za-z_]\w*))?\Z", re.ASCII)
ENV_ASSIGNMENT = re.compile(r"[A-Za-z_]\w*=")

def _options(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Options of each server that take a value as the next word (so it is not the target).
GUNICORN_VALUED = _options(
    "-b --bind -w --workers -k --worker-class --threads -t --timeout -c --config --chdir "
    "--pythonpath --log-file --error-logfile --access-logfile --log-level --access-logformat "
    "-n --name --max-requests --max-requests-jitter --graceful-timeout --keep-alive "
    "--worker-connections -e --env -u --user -g --group -m --umask --backlog --limit-request-line "
    "--limit-request-fields --limit-request-field_size --forwarded-allow-ips -p --pid "
    "--worker-tmp-dir --statsd-host --certfile --keyfile --capture-output --log-config")
WAITRESS_VALUED = _options(
    "--host --port --listen --unix-socket --unix-socket-perms --url-scheme --url-prefix "
    "--ident --threads --backlog --recv-bytes --send-bytes --outbuf-overflow "
    "--inbuf-overflow --connection-limit --cleanup-interval --channel-timeout "
    "--max-request-header-size --max-request-body-size --asyncore-loop-timeout "
    "--trusted-proxy --trusted-proxy-count --trusted-proxy-headers")


@dataclass(frozen=True)
class WsgiTarget:
    module: str
    callable: str
    server: str                  # which server the Procfile runs
    chdir: str | None = None     # gunicorn --chdir: where the module is found
    ignored: tuple[str, ...] = field(default=())   # ini options Opus does otherwise


def parse(text: str) -> dict[str, str]:
    """``type: command`` lines; blank lines and ``#`` comments are skipped."""
    types: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = LINE.match(line)
        if not match:
            raise BuildError(
                f"Procfile line {number} is not `type: command`: {line[:80]!r}",
                ["Each line names a process type (letters, digits, _ and -) and its",
                 "command, e.g.  web: gunicorn mysite.wsgi"])
        name, command = match.group(1), match.group(2).strip()
        if not command:
            raise BuildError(f"Procfile line {number}: process type {name!r} has no command.",
                             ["Give it one, e.g.  web: gunicorn mysite.wsgi, or delete the line."])
        if len(name) > MAX_TYPE:
            raise BuildError(f"Procfile line {number}: the process type name is longer than "
                             f"{MAX_TYPE} characters.", ["Use a shorter name."])
        if name in types:
            raise BuildError(f"Procfile line {number}: process type {name!r} appears twice.",
                             ["Keep one line per process type."])
        types[name] = command
    return types


def _words(command: str) -> list[str] | None:
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    while words and ENV_ASSIGNMENT.match(words[0]):      # FOO=bar gunicorn ...
        words.pop(0)
    if words[:1] == ["exec"]:
        words.pop(0)
    if len(words) >= 3 and words[0] in ("python", "python3") and words[1] == "-m":
        words = [words[2], *words[3:]]                    # python -m gunicorn ...
    return words


def _positional(words: list[str], valued: frozenset[str]) -> tuple[list[str], dict[str, str]]:
    """Positional words and `--option value` pairs of a command line."""
    positional: list[str] = []
    options: dict[str, str] = {}
    items = iter(words)
    for word in items:
        if word.startswith("-") and word != "-":
            name, sep, value = word.partition("=")
            if sep:
                options[name] = value
            elif name in valued:
                options[name] = next(items, "")
            else:
                options[name] = ""
        else:
            positional.append(word)
    return positional, options


# gunicorn's own worker classes that serve a WSGI callable, as mod_wsgi does (its
# tornado worker can serve a Tornado application, its asgi worker an ASGI one).
WSGI_WORKERS = frozenset({
    "sync", "gthread", "eventlet", "gevent", "gevent_wsgi", "gevent_pywsgi",
    "gunicorn.workers.sync.SyncWorker", "gunicorn.workers.gthread.ThreadWorker",
    "gunicorn.workers.geventlet.EventletWorker", "gunicorn.workers.ggevent.GeventWorker",
    "gunicorn.workers.ggevent.GeventPyWSGIWorker",
})


def is_wsgi_worker(worker_class: str) -> bool:
    """True for a gunicorn worker class that serves WSGI (``sync``, ``gthread``, …, also
    as ``egg:gunicorn#sync``); False for any other (``uvicorn_worker.UvicornWorker``)."""
    name = worker_class.removeprefix("egg:gunicorn#")
    return name in WSGI_WORKERS


def worker_classes(options: Mapping[str, str]) -> list[str]:
    """The worker classes gunicorn options name (``-k X``, ``--worker-class=X``, ``-kX``,
    an abbreviation argparse takes such as ``--worker-cl X``)."""
    found = [value for name, value in options.items()
             if name == "-k" or (name.startswith("--worker-cl")    # (abbreviations too)
                                 and "--worker-class".startswith(name))]
    found += [name[2:] for name in options if name.startswith("-k") and len(name) > 2
              and not name.startswith("--")]
    return found


def _target(text: str, server: str, chdir: str | None = None) -> WsgiTarget | None:
    match = TARGET.match(text)
    if not match:
        return None
    return WsgiTarget(match.group(1), match.group(2) or "application", server, chdir)


def _file_module(path: str) -> str | None:
    """``mysite/wsgi.py`` → ``mysite.wsgi``; None for a path that is no module name."""
    if not path.endswith(".py") or path.startswith("/") or ".." in path.split("/"):
        return None
    module = path.removeprefix("./")[:-3].replace("/", ".")
    return module if TARGET.match(module) else None


def wsgi_target(command: str, read: Callable[[str], str | None] | None = None,
                environ: Mapping[str, str] | None = None) -> WsgiTarget | None:
    """The WSGI module and callable a ``web:`` command serves, if it runs a known server.
    `read(path)` gives the text of a file the command names (None if there is none);
    `environ` expands ``$(VAR)`` in it."""
    words = _words(command)
    if not words:
        return None
    program = words[0].rsplit("/", 1)[-1]
    args = words[1:]
    if program == "gunicorn":
        positional, options = _positional(args, GUNICORN_VALUED)
        if len(positional) != 1 or "--paste" in options or "-c" in options \
                or "--config" in options:
            return None
        env_words = _words("gunicorn " + (environ or {}).get("GUNICORN_CMD_ARGS", "")) or []
        _env_positional, env_options = _positional(env_words[1:], GUNICORN_VALUED)
        if not all(is_wsgi_worker(k) for k in (*worker_classes(options),
                                                 *worker_classes(env_options))):
            return None     # an ASGI worker (uvicorn's), tornado's: run as written
        chdir = options.get("--chdir") or None
        return _target(positional[0], "gunicorn", chdir)
    if program == "waitress-serve":
        positional, options = _positional(args, WAITRESS_VALUED)
        if len(positional) != 1 or "--call" in options:
            return None   # --call: a factory, which mod_wsgi cannot call
        return _target(positional[0], "waitress-serve")
    if program in ("uwsgi", "uwsgi-core"):
        positional, options = _positional(args, _options(
            "--module -w --wsgi --wsgi-file --file --http --http-socket --socket -s "
            "--processes -p --threads --master --chdir --callable --ini --env"))
        ini = options.get("--ini") or next((p for p in positional if p.endswith(".ini")), "")
        if ini:
            return _uwsgi_ini_target(ini, read, environ or {})
        return _uwsgi_target({name.lstrip("-"): [value] for name, value in options.items()})
    if program == "mod_wsgi-express":
        positional, options = _positional(args, _options(
            "--port --host --application-type --callable-object --processes --threads "
            "--server-root --working-directory --log-level --url-alias"))
        if positional[:1] == ["start-server"]:
            positional = positional[1:]
        if len(positional) != 1:
            return None
        callable_ = options.get("--callable-object") or "application"
        if options.get("--application-type") == "module":
            found = _target(positional[0], "mod_wsgi-express")
            return found and WsgiTarget(found.module, callable_, found.server)
        module = _file_module(positional[0])
        return WsgiTarget(module, callable_, "mod_wsgi-express") if module else None
    return None


def _uwsgi_target(options: Mapping[str, list[str]]) -> WsgiTarget | None:
    """The target of uwsgi options (from its command line or an ini section)."""
    def first(*names: str) -> str | None:
        return next((options[n][-1] for n in names if options.get(n) and options[n][-1]),
                    None)
    callable_ = first("callable")
    chdir = first("chdir")
    if chdir and chdir.startswith("/"):
        chdir = None      # a path in a container image (/code): the repository is the root
    ignored = tuple(sorted(n for n in UWSGI_DONE_OTHERWISE if options.get(n)))
    module = first("module", "w", "wsgi")
    if module:
        found = _target(module, "uwsgi", chdir)
        if found and callable_ and ":" not in module:
            found = WsgiTarget(found.module, callable_, found.server, found.chdir)
        return found and WsgiTarget(found.module, found.callable, "uwsgi", found.chdir, ignored)
    wsgi_file = _file_module(first("wsgi-file", "file") or "")
    if wsgi_file:
        return WsgiTarget(wsgi_file, callable_ or "application", "uwsgi", chdir, ignored)
    return None


# ini options whose work Opus does its own way: the environment is the app's config,
# static and media files are served by the front, the virtualenv is the release's.
UWSGI_DONE_OTHERWISE = ("env", "static-map", "virtualenv", "home", "venv", "pythonpath")
INI_SECTION = re.compile(r"\[\s*([^\]]*?)\s*\]\Z")
INI_OPTION = re.compile(r"([A-Za-z0-9_.-]+)\s*=\s*(.*)\Z")
INI_VARIABLE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)|%\(([A-Za-z0-9_-]+)\)")


def _uwsgi_ini_target(spec: str, read: Callable[[str], str | None] | None,
                      environ: Mapping[str, str]) -> WsgiTarget | None:
    path, _, section = spec.partition(":")
    if read is None or not path.endswith(".ini"):
        return None
    text = read(path.removeprefix("./"))
    if text is None:
        return None
    return _uwsgi_target(uwsgi_ini(text, environ, section or "uwsgi"))


def uwsgi_ini(text: str, environ: Mapping[str, str],
              section: str = "uwsgi") -> dict[str, list[str]]:
    """The options of one section of a uwsgi ini file, each with its values in order (a
    key may repeat: ``env``, ``static-map``): ``$(VAR)`` from `environ`, ``%(option)``
    from an option set above, as uwsgi expands them (an unknown one becomes empty)."""
    options: dict[str, list[str]] = {}
    current: str | None = None

    def expand(match: re.Match[str]) -> str:
        if match.group(1):
            return environ.get(match.group(1), "")
        values = options.get(match.group(2))
        return values[-1] if values else ""

    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith((";", "#")):
            continue
        header = INI_SECTION.match(line)
        if header:
            current = header.group(1)
            continue
        option = INI_OPTION.match(line)
        if option and current == section:
            value = INI_VARIABLE.sub(expand, option.group(2).strip())
            options.setdefault(option.group(1), []).append(value)
    return options
