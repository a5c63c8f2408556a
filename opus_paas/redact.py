"""No absolute server path reaches a client: every message leaving Opus for a client
passes through `redact`, which names server places symbolically. Output an app or its
build wrote passes through `printable` too: it reaches the user's terminal, whose control
sequences it must not carry."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from opus_paas.settings import Settings


def replacements(settings: Settings, slug: Path | None = None) -> list[tuple[str, str]]:
    """(path, shown-as) pairs, most specific first: the slug a build runs in reads as
    /app, as it would on Heroku."""
    pairs = [] if slug is None else [(str(slug), "/app")]
    pairs += [(str(settings.package_cache), "$OPUS_CACHE"), (str(settings.home), "$OPUS_HOME")]
    return pairs


def redact(text: str, pairs: list[tuple[str, str]]) -> str:
    for path, shown in pairs:
        text = text.replace(path, shown)
    return text


# C0 controls but tab and newline, DEL, and the C1 controls (U+0080-U+009F, which some
# terminals take as 8-bit CSI/OSC/DCS): what lets app output move a user's cursor, set
# their terminal's title or write their clipboard (OSC 52).
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _escaped(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()):02x}"


def printable(text: str) -> str:
    """`text` safe to show on a terminal: each control character (ESC, BEL, CR, …, and
    the C1 range) written as a visible escape such as `\\x1b`; tabs, newlines and all
    other text (UTF-8 letters, emoji) kept."""
    return _CONTROLS.sub(_escaped, text)


def shown(text: str, pairs: list[tuple[str, str]]) -> str:
    """One line of app or build output as a client sees it: no server path, no
    terminal control."""
    return printable(redact(text, pairs))


# ---- command lines in Opus's own logs ----------------------------------------------------
# What an operator's log keeps of a command: its words, with every value that may be a
# secret (config values, passwords, SQL, certificates, URLs with credentials) shown as
# HIDDEN. Keys and names stay, so the log still says what was done to what.
HIDDEN = "***"
# Commands whose every argument is a name, a number or a switch.
PLAIN = frozenset({
    "apps", "apps:info", "apps:destroy", "apps:rename", "config",
    "config:get", "config:unset", "ps", "ps:scale", "ps:set", "ps:restart", "ps:stop",
    "ps:start", "ps:autosleep", "run",
    "domains", "domains:add", "domains:remove", "rollback", "releases",
    "builds", "builds:output", "logs", "access", "access:add", "access:remove", "keys",
    "keys:add", "keys:remove", "users", "users:add", "users:remove", "users:role",
    "users:passwd", "checks", "checks:set", "checks:disable", "git:set", "pythons",
    "pythons:install", "pythons:remove", "doctor", "addons", "pg:create", "pg:info",
    "pg:destroy", "pg:credentials:rotate", "backups", "backups:capture", "backups:restore",
    "backups:download", "backups:schedule", "backups:kept", "certs", "certs:auto",
    "certs:remove", "https:redirect", "status", "version", "help", "redis:create",
    "redis:info", "redis:destroy", "init", "previews", "previews:enable", "previews:disable",
    "git-receive-pack", "git-upload-pack", "nodes", "nodes:add", "nodes:remove", "nodes:key",
})
# Options whose value is secret, per command.
# (apps:create's --from: a git URL may carry a user and token.)
SECRET_OPTIONS = {"pg:psql": ("-c", "--command"), "redis:cli": ("-c", "--command"),
                  "addons:enable": ("--url",), "apps:create": ("--from",),
                  "install": ("--set",)}


def command_line(words: list[str]) -> list[str]:
    """`words` (a command and its arguments) as a log may show them."""
    if not words:
        return []
    command, args = words[0], words[1:]
    if command in PLAIN:
        return list(words)
    if command == "config:set":
        return [command, *args[:1], *[_assignment(a) for a in args[1:]]]
    if command == "certs:add":      # APP, then files, `-`, or (pasted) PEM text
        return [command, *args[:1], *[a if a == "-" else HIDDEN for a in args[1:]]]
    options = SECRET_OPTIONS.get(command)
    if options is not None:
        return [command, *_options(args, options)]
    # Unknown (a typo of a command that takes secrets, perhaps): its name, if it is
    # one, and nothing of its arguments.
    shown = command if command.replace(":", "").replace("-", "").isalnum() and \
        len(command) <= 40 else HIDDEN
    return [shown, *[HIDDEN for _ in args]]


def _assignment(word: str) -> str:
    if word.startswith("--"):
        return word
    key, equals, _value = word.partition("=")
    return f"{key}={HIDDEN}" if equals and key.isidentifier() else HIDDEN


def _options(args: list[str], secret: tuple[str, ...]) -> list[str]:
    shown, hide_next = [], False
    for word in args:
        if hide_next:
            shown.append(HIDDEN)
            hide_next = False
        elif word in secret:
            shown.append(word)
            hide_next = True
        elif word.startswith("-") and any(word.startswith(o) and len(word) > len(o)
                                          for o in secret):
            option = next(o for o in secret if word.startswith(o))
            shown.append(f"{option}{'=' if word[len(option)] == '=' else ''}{HIDDEN}")
        elif word == "--":
            shown.append(word)
        else:
            # positional words: the app's name for these; a certificate or key given
            # inline would be hidden by its own option.
            shown.append(word if word.isprintable() and len(word) <= 64 and
                         "=" not in word and " " not in word else HIDDEN)
    return shown


def logged_command(text: str, limit: int = 200) -> str:
    """An exec request's command line as Opus's log shows it: `command_line` of its
    words, cut to `limit` characters; one that does not split, by its first word."""
    try:
        words = shlex.split(text)
    except ValueError:
        words = [*text.split()[:1], HIDDEN]
    shown = " ".join(w if _BARE.fullmatch(w) else shlex.quote(w) for w in command_line(words))
    return shown[:limit]


_BARE = re.compile(r"[\w@%+=:,./*-]+")
