"""Where one app's files are: every path of an app spelled out in one place.

Built from Settings and an app name (already checked by names.py); does no I/O.
secureops/layout.py derives the same tree for root on its own (it imports nothing
from opus_paas), so a change here is a change there too.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from opus_paas.settings import Settings


@dataclasses.dataclass(frozen=True)
class AppPaths:
    name: str
    dir: Path          # apps/<app>: the app's tree (slugs, data, run state)
    repo: Path         # repos/<app>.git: the bare repository
    build_logs: Path   # builds/<app>: Opus's own logs of the app's builds and pushes
    logs: Path         # the app's process logs (supervisor writes them)
    static: Path       # the front's copies of the app's static files

    @classmethod
    def of(cls, settings: Settings, app: str) -> AppPaths:
        return cls(name=app,
                   dir=settings.apps_dir / app,
                   repo=settings.repos_dir / f"{app}.git",
                   build_logs=settings.build_logs_dir / app,
                   logs=settings.logs_dir / app,
                   static=settings.front_dir / "static" / app)

    @property
    def partial_repo(self) -> Path:
        """Where a new repository is made before it is renamed into place."""
        return self.repo.with_name(f".{self.name}.git.new")

    @property
    def releases(self) -> Path:
        return self.dir / "releases"

    def slug(self, version: int) -> Path:
        return self.releases / f"v{version}"

    @property
    def current(self) -> Path:
        """The symlink to the serving release."""
        return self.dir / "current"

    @property
    def data(self) -> Path:
        """Persistent across releases: the default SQLite database, media uploads."""
        return self.dir / "data"

    @property
    def tmp(self) -> Path:
        """TMPDIR of the app's builds, steps and processes: its own (0700), never the host's
        shared /tmp, where another app could see or plant files."""
        return self.dir / "tmp"

    @property
    def home(self) -> Path:
        """HOME of the app's processes: the run user's own, unlike apps/<app> itself."""
        return self.dir / "home"

    @property
    def cache(self) -> Path:
        """The buildpack's cache directory."""
        return self.dir / "cache"

    @property
    def build_env(self) -> Path:
        """The env dir handed to the buildpack (one file per config variable)."""
        return self.dir / "build-env"

    @property
    def run(self) -> Path:
        """The processes' server roots and state files."""
        return self.dir / "run"

    @property
    def env(self) -> Path:
        """Opus's own directory of config snapshots (not in the slug, which the run user
        owns)."""
        return self.dir / "env"

    def env_file(self, version: int) -> Path:
        """The release's config snapshot."""
        return self.env / f"v{version}.json"

    def build_log(self, version: int) -> Path:
        return self.build_logs / f"build-v{version}.log"

    @property
    def pushes_log(self) -> Path:
        return self.build_logs / "pushes.log"
