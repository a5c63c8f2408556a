"""The process-tree guard (its one home is opus_runtime/guard.py, which the apps'
wrappers use) for Opus's own side:

- `python -m opus_paas.guard -- COMMAND…` runs one of Opus's own programs (the front,
  the SSH server, the dashboard, the scheduler) under it, from the Opus installation
  that runs this (root's own in system mode);
- `prepare_child` is the preexec_fn of the steps Opus starts itself (embedded mode):
  default signal dispositions, nothing blocked, and death with its parent;
  `default_signals` the first two alone.
"""

from __future__ import annotations

import importlib.util
import runpy
from types import ModuleType

from opus_paas.paths import shipped

GUARD = shipped("buildpacks") / "python" / "lib" / "runtime" / "opus_runtime" / "guard.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("opus_runtime_guard", GUARD)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Loaded at import: dies_with_parent runs between fork and exec, where nothing may be
# imported or loaded.
_RUNTIME = _load()


def dies_with_parent() -> None:
    """SIGTERM to this (child) process when the process that started it dies."""
    _RUNTIME.dies_with_parent()


def default_signals() -> None:
    """Every signal at its default action and none blocked (before an exec)."""
    _RUNTIME.default_signals()


def prepare_child() -> None:
    """default_signals, then dies_with_parent: for a step's preexec_fn."""
    _RUNTIME.prepare_child()


if __name__ == "__main__":
    runpy.run_path(str(GUARD), run_name="__main__")
