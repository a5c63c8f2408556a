"""``BUILD/.opus/build.json``, which compile writes and release and the platform read."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from opus_buildpack.errors import BuildError

BUILD_JSON = Path(".opus") / "build.json"
# A manage.py path that can go into a command line unquoted (see django.SAFE_DIR).
SAFE_RELATIVE_PATH = re.compile(r"(?:[A-Za-z0-9_][A-Za-z0-9._-]*/)*manage\.py\Z")


@dataclass(frozen=True)
class BuildInfo:
    python: str
    python_version: str
    interpreter: str | None = None      # the base interpreter the venv was made from
    framework: str | None = None
    manage_py: str | None = None
    settings_module: str | None = None  # the one the build used (a config var's, maybe)
    default_settings_module: str | None = None   # manage.py's, when the repo has it
    wsgi_module: str | None = None
    static_root: str | None = None
    app_root: str = "."                 # where the app's modules are, relative to BUILD
    wsgi_callable: str | None = None
    web_command: str | None = None      # the Procfile's web: when it runs as written
    process_types: dict[str, str] = field(default_factory=dict)   # the Procfile's
    auto_migrate: bool = True


def write_build_info(build: Path, info: BuildInfo) -> Path:
    path = build / BUILD_JSON
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(asdict(info), indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def read_build_info(build: Path) -> BuildInfo:
    path = build / BUILD_JSON
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        hint = "Run bin/compile on the build dir first."
        raise BuildError(f"{path} is missing.", [hint]) from None
    except (OSError, ValueError) as error:
        raise BuildError(f"{path} is unreadable: {error}", ["Rebuild the app."]) from None
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise BuildError(f"{path} is not a JSON object.", ["Rebuild the app."])
    fields = BuildInfo.__dataclass_fields__
    values = {k: v for k, v in data.items() if k in fields}
    types = values.get("process_types", {})
    if not all(v is None or isinstance(v, str) for k, v in values.items()
               if k not in ("process_types", "auto_migrate")) \
            or not {"python", "python_version"} <= values.keys() \
            or not isinstance(values.get("auto_migrate", True), bool) \
            or not isinstance(types, dict) \
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in types.items()):
        raise BuildError(f"{path} has missing or mistyped fields.", ["Rebuild the app."])
    return BuildInfo(**values)


def render_release(info: BuildInfo) -> str:
    """Heroku-style release YAML: a ``release`` process that migrates a Django app, unless
    the Procfile has its own ``release:`` or the app set OPUS_AUTO_MIGRATE=0."""
    if info.framework != "django" or info.manage_py is None or not info.auto_migrate \
            or "release" in info.process_types:
        return "---\ndefault_process_types: {}\n"
    if not SAFE_RELATIVE_PATH.match(info.manage_py):
        raise BuildError(f"Refusing the manage.py path {info.manage_py!r} from build.json.",
                         ["Rebuild the app."])
    return (
        "---\n"
        "default_process_types:\n"
        f"  release: python {info.manage_py} migrate --noinput\n"
    )
