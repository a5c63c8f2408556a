"""Benchmark: how long the Python buildpack takes to build a Django app, cold, warm and
code-only, as ratios to a plain `python -m venv` + `pip install -r requirements.txt` (what
a buildpack without caching does) measured in the same run.

    .venv/bin/python bench/build_speed.py [--runs N]

The app: `django-admin startproject` with `django>=5.2,<5.3` and `whitenoise` in
requirements.txt. Each scenario starts from fresh directories under a temporary root:

- cold: empty package cache and empty app cache (everything downloaded; for Opus also
  mod_wsgi compiled once for the interpreter); the baseline with an empty pip cache;
- warm: a new app, the package cache filled (Opus: uv hardlinks from its cache; the
  baseline: pip installs from its wheel cache);
- code-only: the same app again with only its code changed (Opus reuses the environment;
  the baseline runs pip install again into the existing venv).

Opus's figure is the whole `bin/compile` (venv, packages, mod_wsgi, collectstatic) and,
separately, its "Dependencies ready" step. Prints a Markdown table, writes it to
docs/build-speed.md and the figures to .benchmarks/build_speed.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
BUILDPACK = CHECKOUT / "buildpacks" / "python"
PYTHON = "/usr/bin/python3.11"
REQUIREMENTS = "django>=5.2,<5.3\nwhitenoise>=6.8\n"
READY = re.compile(r"^       Dependencies ready in (\d+\.\d) s$", re.M)


def make_app(root: Path) -> Path:
    root.mkdir(parents=True)
    subprocess.run([sys.executable, "-m", "django", "startproject", "mysite", "."], cwd=root,
                   check=True)
    (root / "requirements.txt").write_text(REQUIREMENTS)
    return root


def uv_dir() -> str:
    import sysconfig

    beside = Path(sysconfig.get_path("scripts")) / "uv"
    found = str(beside) if beside.is_file() else shutil.which("uv")
    if not found:
        sys.exit("uv is not installed next to this Python; run the README's test command once")
    return str(Path(found).parent)


def opus_build(app: Path, app_cache: Path, package_cache: Path) -> tuple[float, float]:
    """Seconds for the whole compile, and for its dependency step."""
    env = {"PATH": f"{uv_dir()}:/usr/bin:/bin", "HOME": str(app.parent), "LANG": "C.UTF-8",
           "OPUS_PYTHON": PYTHON, "OPUS_PACKAGE_CACHE": str(package_cache)}
    env_dir = app.parent / "env"
    env_dir.mkdir(exist_ok=True)
    started = time.monotonic()
    result = subprocess.run([sys.executable, str(BUILDPACK / "bin" / "compile"), str(app),
                             str(app_cache), str(env_dir)], env=env, capture_output=True,
                            text=True, check=False)
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        sys.exit(f"the build failed:\n{result.stdout}{result.stderr}")
    ready = READY.search(result.stdout)
    return elapsed, float(ready.group(1)) if ready else float("nan")


def pip_build(app: Path, venv: Path, pip_cache: Path) -> float:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(app.parent), "LANG": "C.UTF-8",
           "PIP_CACHE_DIR": str(pip_cache), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    started = time.monotonic()
    if not venv.exists():
        subprocess.run([PYTHON, "-m", "venv", str(venv)], env=env, check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "-r",
                    str(app / "requirements.txt")], env=env, check=True, cwd=app)
    return time.monotonic() - started


def median(values: list[float]) -> float:
    return statistics.median(values)


def run(runs: int, root: Path) -> dict[str, dict[str, float]]:
    figures: dict[str, dict[str, list[float]]] = {}

    def record(scenario: str, name: str, value: float) -> None:
        figures.setdefault(scenario, {}).setdefault(name, []).append(value)

    counter = iter(range(10_000))

    def fresh(name: str) -> Path:
        return root / f"{name}-{next(counter)}"

    # Cold: nothing cached anywhere (one run: it downloads, and compiles mod_wsgi).
    opus_cache, pip_cache = fresh("uv-cache"), fresh("pip-cache")
    app = make_app(fresh("app") / "src")
    total, deps = opus_build(app, fresh("app-cache"), opus_cache)
    record("cold", "opus", total)
    record("cold", "opus_deps", deps)
    record("cold", "pip", pip_build(app, fresh("venv"), pip_cache))
    for _ in range(runs):
        # Warm: a new app with the caches filled; both take turns each round.
        app = make_app(fresh("app") / "src")
        app_cache = fresh("app-cache")
        total, deps = opus_build(app, app_cache, opus_cache)
        record("warm", "opus", total)
        record("warm", "opus_deps", deps)
        venv = fresh("venv")
        record("warm", "pip", pip_build(app, venv, pip_cache))
        # Code-only: the same app again, a new build dir with changed code.
        again = fresh("app") / "src"
        shutil.copytree(app, again, ignore=shutil.ignore_patterns(".opus"))
        (again / "mysite" / "views.py").write_text("# changed\n")
        total, deps = opus_build(again, app_cache, opus_cache)
        record("code-only", "opus", total)
        record("code-only", "opus_deps", deps)
        record("code-only", "pip", pip_build(again, venv, pip_cache))
    return {scenario: {name: median(values) for name, values in found.items()}
            for scenario, found in figures.items()}


def table(results: dict[str, dict[str, float]], runs: int) -> str:
    lines = [
        "| build | pip baseline (s) | Opus whole build (s) | Opus / baseline | "
        "Opus dependency step (s) | runs |",
        "|---|---|---|---|---|---|",
    ]
    for scenario in ("cold", "warm", "code-only"):
        found = results[scenario]
        count = 1 if scenario == "cold" else runs
        lines.append(f"| {scenario} | {found['pip']:.2f} | {found['opus']:.2f} | "
                     f"{found['opus'] / found['pip']:.2f}x | {found['opus_deps']:.1f} | "
                     f"{count} |")
    return "\n".join(lines)


def write_doc(results: dict[str, dict[str, float]], runs: int) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = f"""# Build speed: latest figures

Measured with `bench/build_speed.py` on {now}, on one 2-core machine. The app is
`django-admin startproject` with Django 5.2 and whitenoise in requirements.txt, built with
Python {PYTHON}. Medians of the runs shown, wall time in seconds. The baseline, run in the
same invocation, is what a buildpack without caching does: `python -m venv` and
`pip install -r requirements.txt` (with pip's own wheel cache where the scenario says
warm). Opus's whole build also installs mod_wsgi (compiled once per interpreter in the
cold build, then taken from the package cache) and runs collectstatic, which the baseline
does not.

- cold: empty caches everywhere (downloads for both);
- warm: a new app, caches filled;
- code-only: the same app pushed again with only its code changed (Opus reuses the
  app's environment; the baseline runs pip again on its existing venv).

{table(results, runs)}

Goal (issue 4): a code-only rebuild's dependency step under 1 s. The cold build's
dependency step includes compiling mod_wsgi for the interpreter (about 15 s, once per
host and Python version); the warm one hardlinks packages out of uv's cache.
"""
    (CHECKOUT / "docs" / "build-speed.md").write_text(text)
    bench_dir = CHECKOUT / ".benchmarks"
    bench_dir.mkdir(exist_ok=True)
    (bench_dir / "build_speed.json").write_text(json.dumps(results, indent=1) + "\n")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if not os.access(PYTHON, os.X_OK):
        sys.exit(f"{PYTHON} is missing: apt-get install python3.11-venv python3.11-dev")
    with tempfile.TemporaryDirectory(prefix="opus-build-bench-") as tmp:
        results = run(args.runs, Path(tmp))
    print(write_doc(results, args.runs))


if __name__ == "__main__":
    main()

