"""Work done after a push's refs moved (the `post-receive` hook): record the push,
prune old releases. Quiet on success: dulwich treats any stderr as failure."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path

from opus_paas import names, secretfile
from opus_paas import settings as settings_module
from opus_paas.build import release
from opus_paas.errors import OpusError
from opus_paas.layout import AppPaths
from opus_paas.paths import shipped
from opus_paas.settings import Settings
from opus_paas.store import Store
from opus_paas.swarm import prune as swarm_prune


def parse_ref_updates(text: str) -> list[tuple[str, str, str]]:
    """`old new ref` lines → tuples; malformed lines are skipped."""
    updates = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 3 and all(len(f) == 40 for f in fields[:2]):
            updates.append((fields[0], fields[1], fields[2]))
    return updates


def after_push(settings: Settings, repo: Path, updates: list[tuple[bytes, bytes, bytes]],
               request_id: str) -> None:
    """The post-receive work, run by the SSH server itself once refs moved: never
    raises and never talks to the client; a failure goes to the log."""
    text = "".join(f"{old.decode()} {new.decode()} {ref.decode('ascii', 'replace')}\n"
                   for old, new, ref in updates)
    try:
        _post_receive(settings, repo, text)
    except Exception:
        logging.getLogger("opus.hooks").exception("[%s] post-receive work failed", request_id)


def post_receive(stdin_text: str, git_dir: str | None = None) -> int:
    """Never fails the push (its refs already moved) and never writes to stderr,
    which dulwich would relay to the client: problems go to Opus's log."""
    repo = Path(git_dir or os.environ.get("GIT_DIR") or ".").absolute()
    try:
        _post_receive(settings_module.load(), repo, stdin_text)
    except Exception:
        # Settings may be what failed: OPUS_HOME/repos/<app>.git → OPUS_HOME/logs.
        logging.basicConfig(filename=str(repo.parent.parent / "logs" / "hooks.log"),
                            level=logging.INFO)
        logging.getLogger("opus.hooks").exception("post-receive failed")
    return 0


def _post_receive(settings: Settings, repo: Path, stdin_text: str) -> None:
    app = names.app_from_repo_path(repo.name)
    log = AppPaths.of(settings, app).pushes_log
    log.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with secretfile.open_private(log, "a") as out:
        for old, new, ref in parse_ref_updates(stdin_text):
            out.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {ref} {old} {new}\n")
    prune_releases(settings, Store(settings.db_path), app)


def prune_releases(settings: Settings, store: Store, app_name: str) -> list[int]:
    """Delete slugs beyond settings.keep_releases, never the live one."""
    app = store.get_app(app_name)
    if app is None:
        return []
    live = app.live_slug or app.live_version
    keep = {live} if live is not None else set()
    removed = release.prune(settings, app_name, keep, settings.keep_releases)
    # Its old release images on the swarm go too (their manifests; the blobs later).
    with contextlib.suppress(OpusError):
        swarm_prune.forget_releases(settings, store, app)
    return removed


def install(repo_dir: Path) -> None:
    """Install (or refresh) the post-receive hook of a bare repository, run by
    Opus's own interpreter."""
    source = (shipped("hooks") / "post-receive").read_text()
    text = f"#!{sys.executable}\n" + source.split("\n", 1)[1]
    hooks_dir = repo_dir / "hooks"
    target = hooks_dir / "post-receive"
    if target.is_file() and not target.is_symlink() and target.read_text() == text:
        return
    hooks_dir.mkdir(exist_ok=True)
    tmp = hooks_dir / ".post-receive.tmp"
    tmp.write_text(text)
    tmp.chmod(0o755)
    os.replace(tmp, target)
