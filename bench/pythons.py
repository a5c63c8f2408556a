"""Benchmark: what providing a Python costs. An embedded Opus fetches 3.13.0 from the
tests' local mirror (pyenv's 3.13.0 packaged as python-build-standalone packages its
builds: tests/python_mirror.py), and mod_wsgi is built for it once.

    .venv/bin/python bench/pythons.py [--runs N]

- a new interpreter from the mirror: Opus's whole fetch (its download list checked, uv's
  download with the sha256 checked, extraction and sysconfig patch, relocation, a run of
  the interpreter, secureops's copy into place), median of N, against a plain download
  of the same archive and its extraction (urllib and tarfile, nothing checked) in the same
  run;
- mod_wsgi for a new app on that interpreter: built into the wheelhouse (once per
  interpreter per host) against installed from it (what every later app does).

Prints a Markdown table; docs/performance.md keeps the latest one.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from opus_paas import privileged
from opus_paas import settings as settings_module
from opus_paas.build import buildpack
from opus_paas.pythons import fetch, provide, report, wheels
from tests import python_mirror
from tests.conftest import start_opus, stop_opus


def plain_fetch(url: str, into: Path) -> float:
    """Download and unpack, nothing else: the least any installer does."""
    started = time.perf_counter()
    archive = into / "python.tar.gz"
    with urllib.request.urlopen(url) as response, archive.open("wb") as out:
        shutil.copyfileobj(response, out)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "unpacked", filter="data")
    elapsed = time.perf_counter() - started
    shutil.rmtree(into / "unpacked")
    archive.unlink()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="opus-bench-"))
    with python_mirror.serve(work / "mirror") as mirror:
        opus = start_opus(OPUS_PYTHON_DOWNLOADS=mirror.downloads,
                          OPUS_WHEELS_DIR=str(work / "wheels"))
        try:
            settings = settings_module.load(opus.env)
            env = buildpack.build_environment(settings, settings.staging_dir)
            baseline, provided = [], []
            for _ in range(args.runs):
                baseline.append(plain_fetch(f"{mirror.url}/{python_mirror.ARCHIVE}", work))
                started = time.perf_counter()
                name = fetch.fetch(settings, "3.13", lambda _line: None)
                provided.append(time.perf_counter() - started)
                privileged.remove_python(settings, name)
            name = fetch.fetch(settings, "3.13", lambda _line: None)
            found = report.read(settings, env)
            interpreter = provide.find(found, settings, name)
            started = time.perf_counter()
            wheels.build(settings, interpreter, found.mod_wsgi, lambda _line: None)
            built = time.perf_counter() - started
            installed = from_wheelhouse(settings, interpreter, found.mod_wsgi, work)
        finally:
            stop_opus(opus)
            shutil.rmtree(work, ignore_errors=True)
    base, new = statistics.median(baseline), statistics.median(provided)
    print("| what | seconds | ratio to baseline |")
    print("|---|---|---|")
    print(f"| download and unpack the archive, nothing checked (baseline, median of "
          f"{args.runs}) | {base:.2f} | 1.00 |")
    print(f"| Opus provides Python 3.13.0 from the mirror (median of {args.runs}) | "
          f"{new:.2f} | {new / base:.2f} |")
    print("| mod_wsgi for a new app: installed from the wheelhouse (baseline) | "
          f"{installed:.2f} | 1.00 |")
    print(f"| mod_wsgi built into the wheelhouse (once per interpreter) | {built:.2f} | "
          f"{built / installed:.0f} |")


def from_wheelhouse(settings: settings_module.Settings, interpreter: report.Interpreter,
                    requirement: str, work: Path) -> float:
    """What a build does with a wheel in the wheelhouse: a fresh venv, then the install."""
    uv = str(fetch.uv_binary(settings))
    env = {**fetch.uv_environment(settings, work), "UV_CACHE_DIR": str(work / "uv-cache")}
    subprocess.run([uv, "venv", "--quiet", "--python", interpreter.path, str(work / "venv")],
                   env=env, check=True)
    started = time.perf_counter()
    subprocess.run([uv, "pip", "install", "--quiet", "--python", str(work / "venv" / "bin" /
                    "python"), "--no-index", "--find-links",
                    str(settings.wheelhouse_dir / interpreter.wheelhouse), requirement],
                   env=env, check=True)
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
