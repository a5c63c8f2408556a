"""New releases of an existing build: config changes, domain changes and rollbacks.

Each makes release vN+1 from a kept slug and a config, and deploys it the way a push
does (new instance, health check, switch). The stored config changes only once the
new release is live, so a release that fails its check changes nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from opus_paas import access, locks, names, output
from opus_paas.access import Actor
from opus_paas.build import release
from opus_paas.data import postgres, redis
from opus_paas.errors import NotFound, OpusError, UsageError
from opus_paas.front import sites
from opus_paas.layout import AppPaths
from opus_paas.output import Emit
from opus_paas.run import deploy, recovery
from opus_paas.settings import Settings
from opus_paas.store import App, Release, Store
from opus_paas.supervisor import Supervisor
from opus_paas.swarm import deploy as swarm_deploy


def release_build(settings: Settings, store: Store, app: App, *, slug_version: int, sha: str,
                  config: dict[str, str], description: str, emit: Emit) -> int:
    """Deploy the build of release `slug_version` with `config` as a new release; return
    its version. The caller holds the app's deploy lock."""
    slug = AppPaths.of(settings, app.name).slug(slug_version)
    info = release.read_build_info(slug)
    if info is None:
        raise NotFound(f"the build of v{slug_version} is no longer kept; push to build "
                       "again")
    version = store.next_release_version(app)
    env = release.runtime_env(settings, app, slug, config, info,
                              sites.app_domains(settings, store, app))
    release.write_env_file(settings, app.name, version, env)
    store.begin_release(app, version, sha, description, slug_version=slug_version,
                        config=config)
    try:
        switched: deploy.Switched | swarm_deploy.Switched
        if store.scheduler(app) == "swarm":      # the kept image digest (swarm/deploy.py)
            switched = swarm_deploy.release_live(
                settings, store, app, version, emit, slug_version=slug_version,
                config=config, record=lambda port: store.release_went_live(app, version, port))
        else:
            switched = deploy.deploy(settings, store, Supervisor(settings), app, version,
                                     emit, slug_version=slug_version,
                                     record=lambda port: store.release_went_live(app, version,
                                                                                 port))
    except BaseException:
        store.forget_release(app, version)       # (only while it is still pending)
        now = store.get_app(app.name)
        if now is None or now.live_version != version:
            AppPaths.of(settings, app.name).env_file(version).unlink(missing_ok=True)
        raise
    emit(output.step(f"Released v{version}"))
    switched.finish(emit)
    return version


def _say_waiting(app: App, emit: Emit) -> Callable[[], None]:
    return lambda: emit(f"waiting for the deploy of {app.name} to finish…")


def _live_release(store: Store, app: App) -> Release | None:
    return None if app.live_version is None else store.get_release(app, app.live_version)


def change_config(settings: Settings, store: Store, actor: Actor, app_name: str,
                  updates: dict[str, str], removals: list[str], *, restart: bool,
                  emit: Emit) -> int | None:
    """Set `updates` and unset `removals` together, in one new release (unless the app
    has none live, or `restart` is off: then the next deploy takes them). Returns the
    new release's version, if one was made."""
    for key in [*updates, *removals]:
        names.check_config_key(key)
    for key, value in updates.items():
        if "\0" in value:
            raise UsageError(f"the value of {key} contains a NUL byte, which no process "
                             "environment can carry")
    app = access.app_for(store, actor, app_name)
    with locks.app_lock(settings, app.name, on_wait=_say_waiting(app, emit)):
        app = recovery.settle(settings, store, app, emit)
        config = {k: v for k, v in store.config(app).items() if k not in removals}
        config.update(updates)
        live = _live_release(store, app)
        version = None
        if restart and live is not None:
            what = "Set " + ", ".join(updates) if updates else "Unset " + ", ".join(removals)
            version = release_build(settings, store, app, slug_version=live.slug_version,
                                    sha=live.sha, config=config, description=what, emit=emit)
        else:
            store.replace_config(app, config)    # (a release takes its config live with it)
    return version


def rollback(settings: Settings, store: Store, actor: Actor, app_name: str,
             target: int | None, emit: Emit) -> int:
    """Make a new release from release `target` (default: the one before the live one):
    its build and its config."""
    app = access.app_for(store, actor, app_name)
    with locks.app_lock(settings, app.name, on_wait=_say_waiting(app, emit)):
        app = recovery.settle(settings, store, app, emit)
        if app.live_version is None:
            raise NotFound(f"{app.name} has no release to roll back from; push first")
        if target is None:
            older = [r for r in store.list_releases(app)
                     if r.version < app.live_version and r.released]
            if not older:
                raise NotFound(f"{app.name} has no release before v{app.live_version}")
            chosen: Release | None = older[0]
        else:
            chosen = store.get_release(app, target)
        if chosen is not None and not chosen.released:
            why = chosen.note or chosen.state
            raise UsageError(f"v{target} of {app.name} never went live ({why}); choose "
                             f"another with `opus releases {app.name}`")
        if chosen is None:
            raise NotFound(f"{app.name} has no release v{target}; `opus releases "
                           f"{app.name}` lists them")
        config = postgres.carry_over(store, app, chosen.config)   # its database stays
        config = redis.carry_over(store, app, config)             # and its Redis
        return release_build(settings, store, app, slug_version=chosen.slug_version,
                             sha=chosen.sha, config=config,
                             description=f"Rollback to v{chosen.version}", emit=emit)


def change_domain(settings: Settings, store: Store, actor: Actor, app_name: str,
                  domain: str, *, add: bool, emit: Emit) -> int | None:
    """Add or remove a custom domain; a live app gets a new release (ALLOWED_HOSTS
    follows) and the front answers for the domain, or stops to. Returns the release made."""
    names.check_domain(domain)
    if "." not in domain or all(label.isdigit() for label in domain.split(".")):
        raise UsageError(f"{domain} is not a domain of its own (a bare host name or an IP "
                         "address would take the server's own name); give one such as "
                         "www.example.com")
    reserved = settings.domain
    if domain == reserved or domain.endswith("." + reserved):
        raise UsageError(f"{domain} is under {reserved}, which Opus keeps for app names; "
                         "give a domain of your own")
    app = access.app_for(store, actor, app_name)
    with locks.app_lock(settings, app.name, on_wait=_say_waiting(app, emit)):
        app = recovery.settle(settings, store, app, emit)
        if add:
            store.add_domain(app, domain)
        elif not store.remove_domain(app, domain):
            raise NotFound(f"{app.name} has no domain {domain}; `opus domains {app.name}` "
                           "lists them")
        live = _live_release(store, app)
        if live is None:
            return None
        try:
            return release_build(settings, store, app, slug_version=live.slug_version,
                                 sha=live.sha, config=live.config,
                                 description=f"{'Add' if add else 'Remove'} domain {domain}",
                                 emit=emit)
        except BaseException:
            # Put the domains back as they were, and the front with them; the release's
            # own error is the one to report.
            with contextlib.suppress(OpusError):
                if add:
                    store.remove_domain(app, domain)
                else:
                    store.add_domain(app, domain)
                sites.refresh_front(settings, store, Supervisor(settings))
            raise
