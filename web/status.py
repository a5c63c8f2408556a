"""An app's state in one word, from its record and its processes (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opus_paas.store import App

TROUBLE = {"CRASHED", "FATAL", "BACKOFF", "EXITED"}


def app_status(app: App, processes: Sequence[dict[str, Any]], asleep: bool = False) -> str:
    if app.live_version is None:
        return "not deployed"
    if app.stopped:
        return "stopped"
    if asleep:
        return "asleep"
    web = [p for p in processes if p["type"] == "web"]
    if any(p["state"] in TROUBLE for p in processes):
        return "crashed"
    if web and all(p["state"] == "RUNNING" for p in web):
        return "running"
    if not web:
        return "down"
    return str(web[0]["state"]).lower()
