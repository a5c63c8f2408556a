"""Who may do what: every authorization decision in one place.

Admins may do everything; a developer may use the apps they own and those they
collaborate on; the operator at the host's shell (no SSH key involved) is an admin.
A stranger asking about an app gets the same answer as for a missing app. (Names are
one global space, so creating or renaming to a taken name does say it is taken.)
"""

from __future__ import annotations

import dataclasses

from opus_paas import names
from opus_paas.errors import Forbidden, NotFound, UsageError
from opus_paas.settings import Settings
from opus_paas.store import App, Store, User


@dataclasses.dataclass(frozen=True)
class Actor:
    """Who runs a command: an Opus user (over SSH), or the host's operator (user None)."""

    user: User | None = None

    @property
    def name(self) -> str:
        return self.user.name if self.user else "operator"

    @property
    def is_admin(self) -> bool:
        return self.user is None or self.user.is_admin


OPERATOR = Actor()


def not_found(name: str) -> NotFound:
    return NotFound(f"app {name} not found, or you may not use it")


def may_use(actor: Actor, app: App, collaborators: list[str]) -> bool:
    return actor.is_admin or actor.name == app.owner or actor.name in collaborators


def may_manage(actor: Actor, app: App) -> bool:
    """Destroying an app or changing who may use it: its owner and admins only."""
    return actor.is_admin or actor.name == app.owner


def app_for(store: Store, actor: Actor, name: str, *, manage: bool = False) -> App:
    """The app `name` if `actor` may use it (or manage it); NotFound otherwise, the same
    for a stranger as for a missing app. A malformed name is refused as such."""
    app = store.get_app(names.check_app_name(name))
    if app is None or not may_use(actor, app, store.collaborators(app)):
        raise not_found(name)
    if manage and not may_manage(actor, app):
        raise Forbidden(f"only {app.owner} (the owner) or an admin may do that to {name}")
    return app


def fresh(store: Store, app: App) -> App:
    """`app` as the database has it now (call after taking its lock): it may have been
    changed, renamed or destroyed while the caller waited."""
    now = store.get_app(app.name)
    if now is None or now.id != app.id:
        raise not_found(app.name)
    return now


def still_may_use(store: Store, actor: Actor, app: App) -> bool:
    """Asked again while a stream (`logs -t`) goes on: may `actor`, as opus.db has them
    now, still use `app`?"""
    if actor.user is None:
        return True
    user = store.get_user(actor.user.name)
    now = store.get_app(app.name)
    return (user is not None and user.id == actor.user.id and now is not None
            and now.id == app.id and may_use(Actor(user), now, store.collaborators(now)))


def visible_apps(store: Store, actor: Actor) -> list[App]:
    return [a for a in store.list_apps() if may_use(actor, a, store.collaborators(a))]


def require_admin(actor: Actor, doing: str) -> None:
    if not actor.is_admin:
        raise Forbidden(f"only an admin may {doing}")


def may_create(settings: Settings, actor: Actor) -> bool:
    """Creating apps (by `apps:create` or a first push) may be kept to admins."""
    return settings.app_creators == "all" or actor.is_admin


def app_or_creatable(settings: Settings, store: Store, actor: Actor, name: str) -> App | None:
    """For a push: the app if `actor` may use it, None if it is missing and `actor` may
    create it. Where only admins create apps, a developer pushing to a missing name is
    told what a stranger is told, so that answer leaks nothing either."""
    if store.get_app(name) is None and may_create(settings, actor):
        return None
    return app_for(store, actor, name)


def _user(store: Store, name: str) -> User:
    user = store.get_user(name)
    if user is None:
        raise NotFound(f"no user {name}; `opus users` lists them")
    return user


def add_collaborator(store: Store, actor: Actor, app_name: str, user_name: str) -> tuple[App, User]:
    """Let `user_name` push to and manage the config of the app (its owner or an admin
    decides)."""
    app = app_for(store, actor, app_name, manage=True)
    user = _user(store, user_name)
    store.grant(app, user)
    return app, user


def remove_collaborator(store: Store, actor: Actor, app_name: str,
                        user_name: str) -> tuple[App, User]:
    app = app_for(store, actor, app_name, manage=True)
    user = _user(store, user_name)
    if not store.revoke(app, user):
        raise UsageError(f"{user.name} is not a collaborator on {app.name}; "
                         f"`opus access {app.name}` lists them")
    return app, user
