"""A release's record moves pending → (switched →) released or abandoned, and opus.db
keeps a last good copy that replaces a damaged, empty or missing database."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from opus_paas.errors import Conflict, ServiceError
from opus_paas.store import App, Release, Store, database_problem, restore_if_damaged


def new_store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "opus.db")
    store.init()
    return store


def an_app(store: Store) -> App:
    owner = store.add_key("alice", "SHA256:a", "ssh-ed25519 AAAA", "alice")
    return store.create_app("blog", owner, {"SECRET_KEY": "s"})


def release(store: Store, app: App, version: int) -> Release:
    found = store.get_release(app, version)
    assert found is not None
    return found


def live(store: Store) -> App:
    found = store.get_app("blog")
    assert found is not None
    return found


def test_a_push_release_goes_pending_switched_released(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    app = an_app(store)
    store.add_domain(app, "www.example.com")
    store.begin_release(app, 1, "a" * 40, "Deploy aaaaaaa", config={"K": "v"},
                        ref="refs/heads/main", previous_sha="0" * 40)
    assert [r.state for r in store.unfinished_releases(app)] == ["pending"]
    assert live(store).live_version is None                    # nothing live yet
    store.release_went_live(app, 1, 20001)
    now = live(store)
    assert (now.live_version, now.live_port, now.live_slug) == (1, 20001, 1)
    assert store.config(app) == {"K": "v"}                       # its config came live too
    (rel,) = store.unfinished_releases(app)
    assert rel.state == "switched" and rel.domains == ("www.example.com",)
    store.end_release(app, 1, "released")
    assert store.unfinished_releases(app) == []
    assert release(store, app, 1).released


def test_a_release_without_a_branch_is_released_when_it_goes_live(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    app = an_app(store)
    store.begin_release(app, 1, "a" * 40, "Set K", slug_version=1)
    store.release_went_live(app, 1, 20000)
    assert release(store, app, 1).state == "released"
    with pytest.raises(Conflict):            # only a pending release can go live
        store.release_went_live(app, 1, 20001)


def test_only_a_pending_release_is_forgotten(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    app = an_app(store)
    store.begin_release(app, 1, "a" * 40, "Deploy")
    store.release_went_live(app, 1, 20000)
    store.forget_release(app, 1)
    assert store.get_release(app, 1) is not None
    store.begin_release(app, 2, "b" * 40, "Deploy")
    store.forget_release(app, 2)
    assert store.get_release(app, 2) is None
    assert store.next_release_version(app) == 2


def test_an_abandoned_release_keeps_its_version_and_says_why(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    app = an_app(store)
    store.begin_release(app, 1, "a" * 40, "Deploy")
    store.end_release(app, 1, "abandoned", "rolled back: Opus stopped")
    rel = release(store, app, 1)
    assert (rel.state, rel.note, rel.released) == ("abandoned", "rolled back: Opus stopped",
                                                   False)
    assert store.next_release_version(app) == 2             # never given out again


def test_a_damaged_database_is_restored_from_its_copy_and_kept(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    an_app(store)
    backup = tmp_path / "opus.db.backup"
    assert store.backup(backup)
    db = tmp_path / "opus.db"
    os.truncate(db, db.stat().st_size // 2)
    assert database_problem(db) is not None
    said = restore_if_damaged(db, backup)
    assert said is not None and "restored from its copy" in said
    assert database_problem(db) is None
    assert Store(db).get_app("blog") is not None
    assert len([p for p in tmp_path.glob("opus.db.damaged-*") if p.name.endswith("Z")]) == 1


def test_an_empty_or_missing_database_is_restored_but_a_new_home_is_left_alone(
        tmp_path: Path) -> None:
    db, backup = tmp_path / "opus.db", tmp_path / "opus.db.backup"
    assert restore_if_damaged(db, backup) is None            # a new home: nothing to do
    db.write_bytes(b"")
    assert restore_if_damaged(db, backup) is None            # ... even with an empty file
    store = new_store(tmp_path)
    an_app(store)
    store.backup(backup)
    db.write_bytes(b"")                                        # valid to SQLite, but empty
    assert database_problem(db) == "it is empty"
    assert "is empty" in (restore_if_damaged(db, backup) or "")
    db.unlink()
    assert "is missing" in (restore_if_damaged(db, backup) or "")
    assert Store(db).get_app("blog") is not None


def test_no_good_copy_refuses_with_what_to_do(tmp_path: Path) -> None:
    db, backup = tmp_path / "opus.db", tmp_path / "opus.db.backup"
    db.write_bytes(b"not a database" * 100)
    backup.write_bytes(b"nor this")
    with pytest.raises(ServiceError, match="restore one from your own backups"):
        restore_if_damaged(db, backup)


def test_a_damaged_database_never_replaces_the_last_good_copy(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    an_app(store)
    backup = tmp_path / "opus.db.backup"
    assert store.backup(backup)
    good = backup.read_bytes()
    with sqlite3.connect(tmp_path / "opus.db") as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db = tmp_path / "opus.db"
    os.truncate(db, db.stat().st_size // 2)
    assert not store.backup(backup)
    assert backup.read_bytes() == good
