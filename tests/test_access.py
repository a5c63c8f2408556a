"""Who may do what (access.py) and the password hashes (users.py), on a store of their own."""

from __future__ import annotations

from pathlib import Path

import pytest

from opus_paas import access, users
from opus_paas.access import OPERATOR, Actor
from opus_paas.errors import Forbidden, NotFound, UsageError
from opus_paas.settings import Settings
from opus_paas.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "opus.db")
    store.init()
    return store


def test_where_only_admins_create_apps_a_missing_name_looks_like_a_strangers_app(
        store: Store, tmp_path: Path) -> None:
    admin = store.create_user("ann", "admin")
    dev = store.create_user("dev", "developer")
    store.create_app("theirs", admin, {})
    admins_only = Settings(home=tmp_path, app_creators="admins")
    with pytest.raises(NotFound) as missing:
        access.app_or_creatable(admins_only, store, Actor(dev), "missing")
    with pytest.raises(NotFound) as theirs:
        access.app_or_creatable(admins_only, store, Actor(dev), "theirs")
    assert missing.value.message.replace("missing", "X") == \
        theirs.value.message.replace("theirs", "X")
    assert access.app_or_creatable(admins_only, store, Actor(admin), "missing") is None
    everyone = Settings(home=tmp_path)
    assert access.app_or_creatable(everyone, store, Actor(dev), "missing") is None


def test_the_operator_is_an_admin_and_a_collaborator_uses_but_does_not_manage(
        store: Store) -> None:
    owner = store.create_user("own", "developer")
    collab = store.create_user("col", "developer")
    app = store.create_app("app", owner, {})
    store.grant(app, collab)
    assert access.app_for(store, OPERATOR, "app", manage=True).name == "app"
    assert access.app_for(store, Actor(collab), "app").name == "app"
    with pytest.raises(Forbidden):
        access.app_for(store, Actor(collab), "app", manage=True)
    store.revoke(app, collab)
    with pytest.raises(NotFound):
        access.app_for(store, Actor(collab), "app")


def test_settings_refuse_an_unknown_creator_policy(tmp_path: Path) -> None:
    from opus_paas import settings
    with pytest.raises(UsageError, match="use one of all, admins"):
        settings.load({"OPUS_HOME": str(tmp_path), "OPUS_APP_CREATORS": "everyone"})


def test_passwords_are_salted_scrypt_and_checked_in_constant_time() -> None:
    first, second = users.hash_password("correct horse"), users.hash_password("correct horse")
    assert first != second and first.startswith("scrypt$16384$8$1$")
    assert users.check_password("correct horse", first)
    assert not users.check_password("correct horsf", first)
    assert not users.check_password("anything", None)
    assert not users.check_password("anything", "scrypt$garbage")
