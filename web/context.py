"""What every view needs, fetched and authorized together: the settings, the store, who
is signed in, and an app that user may use (NotFound otherwise, as for a missing app)."""

from __future__ import annotations

from flask import current_app, g

from opus_paas import access, redact
from opus_paas.access import Actor
from opus_paas.settings import Settings
from opus_paas.store import App, Store


def settings() -> Settings:
    found: Settings = current_app.config["OPUS_SETTINGS"]
    return found


def store() -> Store:
    if "store" not in g:
        g.store = Store(settings().db_path)   # its tables are made in create_app
    found: Store = g.store
    return found


def actor() -> Actor:
    """The signed-in user as the core functions know them (auth guarantees one)."""
    found: Actor = g.actor
    return found


def get_app(name: str, *, manage: bool = False) -> App:
    return access.app_for(store(), actor(), name, manage=manage)


def shown(text: str) -> str:
    """`text` with no absolute server path (and no terminal control) in it, as every
    client is shown things."""
    return redact.shown(text, redact.replacements(settings()))
