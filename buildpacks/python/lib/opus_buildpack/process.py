"""Run a subprocess and relay its output to the build log line by line, as it happens."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from opus_buildpack.output import Output


def run_relayed(
    command: Sequence[str], out: Output, *, env: Mapping[str, str], cwd: Path | None = None
) -> int:
    """Run ``command`` with exactly ``env``; relay stdout and stderr as detail; return its code."""
    with subprocess.Popen(
        list(command),
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    ) as process:
        assert process.stdout is not None
        for raw in process.stdout:
            # A progress bar redraws with \r; only its final state is worth showing.
            line = raw.decode("utf-8", errors="replace").rstrip().rsplit("\r", 1)[-1]
            if line.strip():
                out.detail(line)
        return process.wait()


def run_captured(
    command: Sequence[str], *, env: Mapping[str, str], cwd: Path | None = None
) -> tuple[int, list[str]]:
    """Run ``command`` with exactly ``env``; return its code and output lines, not relayed."""
    result = subprocess.run(
        list(command), cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False,
    )
    lines = result.stdout.decode("utf-8", errors="replace").splitlines()
    return result.returncode, [line for line in lines if line.strip()]
