"""The code's shape, as docs/design-notes.md ("Where the code lives") describes it:
imports go one way between the packages, and a command's usage is written once."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import opus_paas
from opus_paas.control import commands

ROOT = Path(opus_paas.__file__).parent
# The packages in the order of design-notes.md; each imports only from those before it.
# The base is the top-level modules (and store/); apps and users are the core operations.
ORDER = ["base", "pythons", "build", "front", "data", "run", "tls", "git", "core", "control",
         "builder"]
# The arrows against the list, each named there: two by design, two still to move
# (data/nodes.py rewrites Opus's own programs through control/lifecycle.py and uses
# tls/private_ca.py).
EXCEPTIONS = {("opus_paas.control.commands", "opus_paas.builder"),
              ("opus_paas.run.previews", "opus_paas.git.hooks"),
              ("opus_paas.data.nodes", "opus_paas.control.lifecycle"),
              ("opus_paas.data.nodes", "opus_paas.tls.private_ca")}


def layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "opus_paas" or len(parts) == 1:
        return None
    if (ROOT / f"{parts[1]}.py").exists():
        return "core" if parts[1] in ("apps", "users") else "base"
    if parts[1] == "store":
        return "base"
    return parts[1] if parts[1] in ORDER else None      # a package not in the list


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return found


def test_no_package_imports_one_after_it() -> None:
    against = []
    for path in sorted(ROOT.rglob("*.py")):
        module = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts)
        module = module.removesuffix(".__init__")
        mine = layer(module)
        if mine is None or path.name == "__main__.py":
            continue
        for target in sorted(imports(path)):
            theirs = layer(target)
            if theirs is not None and ORDER.index(theirs) > ORDER.index(mine) and not any(
                    module == a and target.startswith(b) for a, b in EXCEPTIONS):
                against.append(f"{module} ({mine}) imports {target} ({theirs})")
    assert against == []


def test_a_usage_is_written_once_in_its_command() -> None:
    """Handlers show `ctx.usage` (the table's line), never a copy of it."""
    copies = [c.name for c in commands.TABLE.values()
              if f'"{c.usage}' in inspect.getsource(c.run) or
              f'"usage: {c.usage}' in inspect.getsource(c.run)]
    assert copies == []
    assert all(c.usage.startswith(f"opus {c.name}") for c in commands.TABLE.values())
