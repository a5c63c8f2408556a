"""The app's own build hooks, ``bin/pre_compile`` and ``bin/post_compile``, as Heroku runs
them: from the build dir, with the app's config and (after install) its venv on PATH."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

from opus_buildpack.errors import BuildError
from opus_buildpack.output import Output
from opus_buildpack.process import run_relayed


def run_hook(build: Path, name: str, out: Output, env: Mapping[str, str]) -> bool:
    """Run ``bin/<name>`` if the app has one; False when it has none."""
    hook = build / "bin" / name
    try:
        info = hook.lstat()
    except OSError:
        return False
    if not stat.S_ISREG(info.st_mode):
        raise BuildError(f"bin/{name} is not a regular file.",
                         [f"Make bin/{name} a script (not a link or a directory)."])
    out.step(f"Running bin/{name}")
    os.chmod(hook, (info.st_mode & 0o777) | 0o100)   # the build user runs it
    with hook.open("rb") as handle:
        has_shebang = handle.read(2) == b"#!"
    command = [str(hook)] if has_shebang else ["/bin/bash", str(hook)]
    code = run_relayed(command, out, env=env, cwd=build)
    if code != 0:
        raise BuildError(f"bin/{name} failed (exit status {code}).",
                         [f"Fix bin/{name} (its output is above) and push again."])
    return True
