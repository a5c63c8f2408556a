"""Heroku's `app.json`, read strictly: what an app asks for on its first deploy (config
vars, add-ons, a postdeploy script, a formation). Pure: bytes in, a typed spec out.

Every refusal names the field and says what to change; nothing is "cleaned". Fields of
Heroku's schema that Opus does not honour are listed in `AppJson.notes`, never applied.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from opus_paas.errors import UsageError
from opus_paas.names import CONFIG_KEY, PROCESS_TYPE

FILE = "app.json"
MAX_BYTES = 64 * 1024
MAX_ENV = 200
MAX_ADDONS = 10
MAX_FORMATION = 32
MAX_TEXT = 2000            # name, descriptions
MAX_VALUE = 32 * 1024      # one env value
MAX_SCRIPT = 4096
# The scale limits of `ps:scale` (opus_paas.run.ps), repeated here to keep this pure.
MAX_WEB_PROCESSES = 16
MAX_TYPE_PROCESSES = 16

POSTGRES = "postgres"
REDIS = "redis"
# app.json add-on service names → the provider Opus sets up for them.
ADDON_SERVICES = {"heroku-postgresql": POSTGRES, "postgres": POSTGRES,
                  "postgresql": POSTGRES, "heroku-redis": REDIS, "redis": REDIS}
# The config var (Heroku's attachment name, `as`) each provider sets: NAME_URL.
ATTACHMENTS = {POSTGRES: "DATABASE", REDIS: "REDIS"}
PROVIDED = "heroku-postgresql and heroku-redis"
# Heroku's fields Opus reads but does not apply (said on the push).
IGNORED_TOP = ("repository", "logo", "keywords", "website", "success_url", "buildpacks",
               "stack", "image", "environments", "cron")
IGNORED_SCRIPTS = ("pr-predestroy", "predestroy", "test", "test-setup")
TOP_FIELDS = ("name", "description", "env", "addons", "scripts", "formation", *IGNORED_TOP)


class AppJsonError(UsageError):
    """app.json cannot be honoured; the message says which field and what to do."""


@dataclasses.dataclass(frozen=True)
class EnvVar:
    name: str
    description: str = ""
    value: str | None = None
    required: bool = True      # Heroku's default; matters only without value/generator
    generate_secret: bool = False


@dataclasses.dataclass(frozen=True)
class Addon:
    provider: str               # a key of appsetup.PROVIDERS, e.g. "postgres"
    plan: str                   # as written, e.g. "heroku-postgresql:essential-0"


@dataclasses.dataclass(frozen=True)
class AppJson:
    name: str = ""
    description: str = ""
    env: tuple[EnvVar, ...] = ()
    addons: tuple[Addon, ...] = ()
    postdeploy: str | None = None
    formation: tuple[tuple[str, int], ...] = ()
    notes: tuple[str, ...] = ()


def _fail(field: str, problem: str, fix: str) -> AppJsonError:
    return AppJsonError(f"{FILE}: {field} {problem}; {fix}")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise _fail(f"the key {key[:60]!r}", "appears twice in one object",
                        "keep one of them")
        found[key] = value
    return found


def _no_constant(word: str) -> Any:
    raise _fail("a number", f"is {word}, which JSON does not allow", "write a plain number")


def parse(data: bytes) -> AppJson:
    """The spec in `data` (the file's bytes), or AppJsonError saying what to fix."""
    if len(data) > MAX_BYTES:
        raise _fail("as a whole", f"has {len(data)} bytes, more than the {MAX_BYTES} Opus "
                    "reads", "keep it to the fields Opus honours (docs/app-json.md)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise _fail("as a whole", "is not UTF-8 text", "save it as UTF-8") from None
    if "\0" in text:
        raise _fail("as a whole", "contains a NUL byte", "remove it")
    try:
        document = json.loads(text, object_pairs_hook=_no_duplicates,
                              parse_constant=_no_constant)
    except AppJsonError:
        raise
    except RecursionError:
        raise _fail("as a whole", "nests too deeply", "flatten it") from None
    except ValueError as exc:     # JSONDecodeError, and integers too long to convert
        where = f" (line {exc.lineno}, column {exc.colno})" \
            if isinstance(exc, json.JSONDecodeError) else ""
        raise _fail("as a whole", f"is not valid JSON{where}: {str(exc)[:120]}",
                    "fix it (`python3 -m json.tool app.json` shows where)") from None
    return validate(document)


def validate(document: object) -> AppJson:
    """The spec in an already-decoded JSON document."""
    top = _object(document, "the document")
    unknown = [k for k in top if k not in TOP_FIELDS]
    if unknown:
        raise _fail(f"the field {unknown[0][:60]!r}", "is not one of app.json's fields",
                    f"remove it (Opus reads {', '.join(TOP_FIELDS[:6])})")
    notes = [f"{k} is not used by Opus" for k in IGNORED_TOP if k in top]
    env = _env(top.get("env", {}))
    addons = _addons(top.get("addons", []), notes)
    postdeploy = _scripts(top.get("scripts", {}), notes)
    formation = _formation(top.get("formation", {}), notes)
    return AppJson(name=_text(top.get("name", ""), "name", MAX_TEXT),
                   description=_text(top.get("description", ""), "description", MAX_TEXT),
                   env=env, addons=addons, postdeploy=postdeploy, formation=formation,
                   notes=tuple(notes))


def _object(value: object, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(field, f"is {_kind(value)}, not an object", "write it as {...}")
    return value


def _kind(value: object) -> str:
    names = {bool: "true/false", int: "a number", float: "a number", str: "a string",
             list: "a list", dict: "an object", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _text(value: object, field: str, limit: int) -> str:
    if not isinstance(value, str):
        raise _fail(field, f"is {_kind(value)}, not a string", "write it in quotes")
    if len(value) > limit:
        raise _fail(field, f"has {len(value)} characters, more than {limit}",
                    "shorten it")
    if "\0" in value:
        raise _fail(field, "contains a NUL character", "remove it")
    return value


def _env(value: object) -> tuple[EnvVar, ...]:
    entries = _object(value, "env")
    if len(entries) > MAX_ENV:
        raise _fail("env", f"has {len(entries)} variables, more than {MAX_ENV}",
                    "set the rest with `opus config:set`")
    found = []
    for name, spec in entries.items():
        shown = json.dumps(name[:60])
        if not CONFIG_KEY.fullmatch(name):
            raise _fail(f"env {shown}", "is not a variable name",
                        "use letters, digits and '_', not starting with a digit")
        field = f"env.{name}"
        if isinstance(spec, str):
            found.append(EnvVar(name, value=_text(spec, field, MAX_VALUE)))
            continue
        spec = _object(spec, field)
        unknown = [k for k in spec if k not in ("description", "value", "required",
                                                "generator")]
        if unknown:
            raise _fail(f"{field}.{unknown[0][:40]}", "is not a field of an env variable",
                        "use description, value, required or generator")
        required = spec.get("required", True)
        if not isinstance(required, bool):
            raise _fail(f"{field}.required", f"is {_kind(required)}",
                        "write true or false")
        generator = spec.get("generator")
        if generator is not None and generator != "secret":
            raise _fail(f"{field}.generator", "is not \"secret\"",
                        "use \"secret\" (the only generator) or remove it")
        value_of = spec.get("value")
        if value_of is not None:
            value_of = _text(value_of, f"{field}.value", MAX_VALUE)
            if generator is not None:
                raise _fail(field, "has both a value and a generator", "keep one")
        found.append(EnvVar(name, _text(spec.get("description", ""),
                                        f"{field}.description", MAX_TEXT),
                            value_of, required, generator == "secret"))
    return tuple(found)


def _addons(value: object, notes: list[str]) -> tuple[Addon, ...]:
    if not isinstance(value, list):
        raise _fail("addons", f"is {_kind(value)}, not a list", "write it as [...]")
    if len(value) > MAX_ADDONS:
        raise _fail("addons", f"lists {len(value)} add-ons, more than {MAX_ADDONS}",
                    f"keep the ones Opus provides ({PROVIDED})")
    found: list[Addon] = []
    for number, entry in enumerate(value):
        field = f"addons[{number}]"
        if isinstance(entry, dict):
            unknown = [k for k in entry if k not in ("plan", "as", "options")]
            if unknown:
                raise _fail(f"{field}.{unknown[0][:40]}", "is not a field of an add-on",
                            "use plan (and as, options)")
            if entry.get("options"):
                _object(entry["options"], f"{field}.options")
                notes.append(f"{field}.options is not used by Opus")
            plan = _text(entry.get("plan"), f"{field}.plan", 200)
        else:
            plan = _text(entry, field, 200)
        service = plan.partition(":")[0]
        provider = ADDON_SERVICES.get(service)
        if provider is None:
            raise _fail(f"{field} ({json.dumps(plan[:60])})", "is an add-on Opus does not "
                        "provide", "remove it and set its config vars yourself with "
                        f"`opus config:set`; Opus provides {PROVIDED}")
        attachment = ATTACHMENTS[provider]
        if isinstance(entry, dict) and "as" in entry and entry["as"] != attachment:
            raise _fail(f"{field}.as", f"names an attachment other than {attachment}",
                        f"remove it: Opus sets {attachment}_URL")
        if any(a.provider == provider for a in found):
            raise _fail(field, f"asks for {service} a second time", "list it once")
        found.append(Addon(provider, plan))
    return tuple(found)


def _scripts(value: object, notes: list[str]) -> str | None:
    scripts = _object(value, "scripts")
    unknown = [k for k in scripts if k != "postdeploy" and k not in IGNORED_SCRIPTS]
    if unknown:
        raise _fail(f"scripts.{unknown[0][:40]}", "is not a script app.json knows",
                    "remove it (Opus runs postdeploy)")
    notes.extend(f"scripts.{k} is not used by Opus" for k in IGNORED_SCRIPTS if k in scripts)
    if "postdeploy" not in scripts:
        return None
    script = scripts["postdeploy"]
    if isinstance(script, dict):
        unknown = [k for k in script if k not in ("command", "size")]
        if unknown:
            raise _fail(f"scripts.postdeploy.{unknown[0][:40]}", "is not known",
                        "use command (a string)")
        script = script.get("command")
    text = _text(script, "scripts.postdeploy", MAX_SCRIPT)
    if not text.strip():
        raise _fail("scripts.postdeploy", "is empty", "give a command or remove it")
    if "\n" in text or "\r" in text:
        raise _fail("scripts.postdeploy", "spans lines",
                    "write one line (join commands with &&) or run a script file")
    return text


def _formation(value: object, notes: list[str]) -> tuple[tuple[str, int], ...]:
    entries = _object(value, "formation")
    if len(entries) > MAX_FORMATION:
        raise _fail("formation", f"has {len(entries)} process types, more than "
                    f"{MAX_FORMATION}", "keep the Procfile's types")
    found = []
    for kind, spec in entries.items():
        shown = json.dumps(kind[:60])
        if not PROCESS_TYPE.fullmatch(kind) or kind == "release":
            raise _fail(f"formation {shown}", "is not a process type",
                        "use a Procfile type: letters, digits, '.', '_' and '-'")
        field = f"formation.{kind}"
        spec = _object(spec, field)
        unknown = [k for k in spec if k not in ("quantity", "size")]
        if unknown:
            raise _fail(f"{field}.{unknown[0][:40]}", "is not known", "use quantity")
        if "size" in spec:
            notes.append(f"{field}.size is not used by Opus")
        if "quantity" not in spec:
            continue
        quantity = spec["quantity"]
        low, high = (1, MAX_WEB_PROCESSES) if kind == "web" else (0, MAX_TYPE_PROCESSES)
        if type(quantity) is not int or not low <= quantity <= high:
            raise _fail(f"{field}.quantity", f"is {json.dumps(quantity)[:40]}",
                        f"give a whole number from {low} to {high}")
        found.append((kind, quantity))
    return tuple(found)
