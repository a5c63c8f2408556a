"""Byte code for an image's Python files, compiled at publish by the base's own
interpreter: hash-based, unchecked `.pyc` files (PEP 552) carry no mtime and are never
rewritten, so a task on a read-only root starts without compiling the app and its
packages, and the same sources give the same bytes.

The sources are the app's; compiling runs none of them (compile(), no import), in a
child process of the base's Python with a time limit.
"""

from __future__ import annotations

import base64
import json
import posixpath
import subprocess
from pathlib import Path

from opus_paas.errors import ServiceError
from opus_paas.swarm.layers import Entry

# Runs in the base's Python (-I): [[image path, base64 source], …] on stdin, its cache
# tag and {image path: base64 pyc} on stdout; a file that does not compile gets none
# (Python reports it when the app imports it, as it would anywhere).
_COMPILER = r"""
import base64, importlib.util, json, sys
from importlib._bootstrap_external import _code_to_hash_pyc
pycs = {}
for name, text in json.load(sys.stdin):
    source = base64.b64decode(text)
    try:
        code = compile(source, "/" + name, "exec", dont_inherit=True)
    except (SyntaxError, ValueError):
        continue
    pyc = _code_to_hash_pyc(code, importlib.util.source_hash(source), False)
    pycs[name] = base64.b64encode(pyc).decode()
json.dump({"tag": sys.implementation.cache_tag, "pycs": pycs}, sys.stdout)
"""


def pyc_name(source: str, tag: str) -> str:
    """`a/b/mod.py` → `a/b/__pycache__/mod.TAG.pyc`, where Python looks for it."""
    directory, file = posixpath.split(source)
    return posixpath.join(directory, "__pycache__", f"{file[:-3]}.{tag}.pyc")


def with_bytecode(entries: list[Entry], python: Path, timeout: float = 600) -> list[Entry]:
    """`entries` plus a `.pyc` beside every `.py` file that compiles."""
    sources = [[e.name, base64.b64encode(e.data).decode()] for e in entries
               if e.kind == "file" and e.name.endswith(".py")]
    if not sources:
        return entries
    try:
        result = subprocess.run([str(python), "-I", "-c", _COMPILER],
                                input=json.dumps(sources).encode(), capture_output=True,
                                timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise ServiceError(f"compiling the image's Python files took over {timeout:.0f} s; "
                           "publish again") from None
    if result.returncode != 0:
        raise ServiceError("compiling the image's Python files failed: "
                           f"{result.stderr.decode(errors='replace')[-500:]}")
    out = json.loads(result.stdout)
    tag = str(out["tag"])
    return [*entries, *(Entry(pyc_name(name, tag), "file", 0o644, base64.b64decode(pyc))
                        for name, pyc in sorted(out["pycs"].items()))]
