"""What the front serves over https, from the database's HTTPS state (the certificates
Opus installed and each site's switches): the `tls` parts of the front's spec.

secureops keeps only the names an installed certificate really covers, so what is
asked here is an upper bound: a name without a certificate stays on http.
"""

from __future__ import annotations

from typing import Any

from opus_paas.settings import Settings
from opus_paas.store import Store, TlsSite

DASHBOARD_SITE = "opus"     # the dashboard's site name (no app may be called so)


def site_tls(state: TlsSite | None, domains: list[str]) -> dict[str, Any] | None:
    """A site's `tls` in the front's spec: the domains its certificate covers, and the
    certificate's serial (a new certificate is a new spec, so the front reloads) (pure)."""
    if state is None or state.source is None or not state.serial:
        return None
    covered = [d for d in domains if covers(list(state.domains), d)]
    return ({"domains": covered, "redirect": state.redirect, "serial": state.serial}
            if covered else None)


def covers(names: list[str], domain: str) -> bool:
    """Whether a certificate for `names` is valid for `domain` (one-label wildcards)."""
    head, _, rest = domain.partition(".")
    return domain in names or bool(rest and head and f"*.{rest}" in names)


def states(settings: Settings) -> dict[str, TlsSite]:
    """Every site's HTTPS state (none before the database exists)."""
    if not settings.db_path.exists():
        return {}
    return Store(settings.db_path).list_tls_sites()


def dashboard_tls(settings: Settings, known: dict[str, TlsSite]) -> dict[str, Any] | None:
    """The dashboard's `tls` (always redirected to https once it has a certificate)."""
    found = site_tls(known.get(DASHBOARD_SITE), [settings.dashboard_domain])
    return {**found, "redirect": True} if found else None
