"""Each site's certificate: ordered from the ACME server (automatic, renewed) or given by
the operator, installed through secureops, and made live with a graceful reload of the
front. A site is an app (by name) or the dashboard ("opus").

An order that fails changes nothing that serves: the site keeps its old certificate (or
plain http), and the failure is recorded with when Opus tries again (backing off).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import ipaddress
import os
import time
from collections.abc import Iterator

from opus_paas import privileged
from opus_paas.errors import Conflict
from opus_paas.front import sites as front_sites
from opus_paas.front.tls import DASHBOARD_SITE, covers
from opus_paas.output import Emit
from opus_paas.settings import Settings
from opus_paas.store import Store, TlsSite
from opus_paas.supervisor import Supervisor
from opus_paas.tls import pem

DAY = 86400.0
RENEW_BEFORE = 30 * DAY
FIRST_RETRY = 300.0          # 5 min, then doubling, at most a day
LONGEST_RETRY = DAY


# ---- what is due (pure) -----------------------------------------------------------------

def orderable(domain: str) -> bool:
    """Whether an ACME CA could ever validate `domain`: not loopback names, not IPs."""
    if domain == "localhost" or domain.endswith(".localhost"):
        return False
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(domain)
        return False
    return True


def renew_at(not_before: float, not_after: float) -> float:
    """When a certificate is renewed: 30 days before it expires, or with a third of its
    life left when that is shorter (Let's Encrypt's advice for short-lived ones)."""
    return not_after - min(RENEW_BEFORE, (not_after - not_before) / 3)


def retry_delay(failures: int) -> float:
    """How long after the `failures`-th failure in a row the next order is tried."""
    return float(min(FIRST_RETRY * 2 ** max(failures - 1, 0), LONGEST_RETRY))


def why_order(state: TlsSite, wanted: list[str], now: float) -> str | None:
    """Why the site needs a new certificate now, or None (pure)."""
    if not state.auto or state.source == "operator" or not wanted:
        return None
    if state.source is None:
        return "no certificate yet"
    missing = [d for d in wanted if not covers(list(state.domains), d)]
    if missing:
        return f"not covered yet: {', '.join(missing)}"
    assert state.not_before is not None and state.not_after is not None
    if now >= renew_at(state.not_before, state.not_after):
        return "renewal due"
    return None


def due(state: TlsSite, wanted: list[str], now: float) -> str | None:
    """why_order, unless the site is backing off after a failure (pure)."""
    reason = why_order(state, wanted, now)
    if reason is None or (state.retry_at is not None and now < state.retry_at):
        return None
    return reason


# ---- the sites --------------------------------------------------------------------------

def domains(settings: Settings, store: Store, site: str) -> list[str]:
    """Every host name of the site."""
    if site == DASHBOARD_SITE:
        return [settings.dashboard_domain]
    app = store.get_app(site)
    return front_sites.app_domains(settings, store, app) if app is not None else []


def wanted(settings: Settings, store: Store, site: str) -> list[str]:
    """The site's names an ACME certificate is ordered for."""
    return [d for d in domains(settings, store, site) if orderable(d)]


def sites(store: Store) -> list[str]:
    """Every site: each app, and the dashboard."""
    return [DASHBOARD_SITE, *(app.name for app in store.list_apps())]


@contextlib.contextmanager
def _site_lock(settings: Settings, site: str) -> Iterator[None]:
    """One order or change per site at a time (a command and the scheduler alike)."""
    settings.locks_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(settings.locks_dir / f"_tls-{site}.lock",
                 os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Conflict(f"a certificate for {site} is being ordered or changed right "
                           "now; look again in a minute with `opus certs`") from None
        yield
    finally:
        os.close(fd)


def reload_front(settings: Settings, store: Store) -> None:
    """Render the front from the database and reload it gracefully if that changed."""
    front_sites.refresh_front(settings, store, Supervisor(settings))


def install(settings: Settings, store: Store, site: str, pair: pem.Pair, source: str) -> None:
    """Hand the pair to secureops, record it, and make it live."""
    privileged.install_cert(settings, site, pair.chain, pair.key)
    store.set_tls_site(site, source=source, domains=list(pair.facts.names),
                          not_before=pair.facts.not_before, not_after=pair.facts.not_after,
                          serial=pair.facts.serial, issuer=pair.facts.issuer,
                          installed_at=time.time(), failures=0, last_error=None,
                          failed_at=None, retry_at=None)
    reload_front(settings, store)


def issue(settings: Settings, store: Store, site: str, emit: Emit,
          now: float | None = None) -> bool:
    """Order a certificate for the site's names and install it; False (the failure
    recorded, the next try scheduled) when the order fails. Nothing that serves changes
    on failure."""
    names = wanted(settings, store, site)
    if not names:
        return False
    with _site_lock(settings, site):
        emit(f"Ordering a certificate for {', '.join(names)} from {settings.acme_directory}")
        key = pem.new_key()
        # Here, not at the top: the ACME client (requests, josepy) costs 0.1 s of every
        # `opus` command's start, and only an order needs it.
        from opus_paas.tls import acme
        try:
            chain = acme.order(settings, names, key, emit)
            pair = pem.check_pair(chain, key, time.time())
            install(settings, store, site, pair, "acme")
        except Exception as exc:     # whatever it was, recorded, shown, and tried again later
            state = store.tls_site(site)
            failures = state.failures + 1
            at = time.time() if now is None else now
            reason = str(exc) or type(exc).__name__
            store.set_tls_site(site, failures=failures, last_error=reason[:1000],
                                  failed_at=at, retry_at=at + retry_delay(failures))
            emit(f"The order failed: {reason}")
            return False
    emit(f"Installed a certificate for {', '.join(pair.facts.names)}, valid until "
         f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(pair.facts.not_after))}")
    return True


def add_operator_cert(settings: Settings, store: Store, site: str, chain_pem: str,
                      key_pem: str) -> pem.Pair:
    """Install the operator's own certificate for the site (which stops ordering one)."""
    pair = pem.check_pair(chain_pem, key_pem, time.time())
    names = domains(settings, store, site)
    served = [d for d in names if covers(list(pair.facts.names), d)]
    if not served:
        raise Conflict(f"the certificate is for {', '.join(pair.facts.names)}, none of "
                       f"{site}'s domains ({', '.join(names)}); add the domain first with "
                       f"`opus domains:add {site} DOMAIN`")
    with _site_lock(settings, site):
        store.set_tls_site(site, auto=False)
        install(settings, store, site, pair, "operator")
    return pair


def remove(settings: Settings, store: Store, site: str) -> None:
    """Remove the site's certificate (back to http) and stop ordering one."""
    with _site_lock(settings, site):
        store.set_tls_site(site, auto=False, source=None, domains=[], not_before=None,
                              not_after=None, serial=None, issuer=None, installed_at=None,
                              failures=0, last_error=None, failed_at=None, retry_at=None)
        reload_front(settings, store)
        privileged.remove_cert(settings, site)


def set_auto(settings: Settings, store: Store, site: str, on: bool) -> None:
    """Turn ordering on (the next try at once) or off (the certificate stays)."""
    store.set_tls_site(site, auto=on, failures=0, retry_at=None)


def set_redirect(settings: Settings, store: Store, site: str, on: bool) -> None:
    store.set_tls_site(site, redirect=on)
    reload_front(settings, store)


# ---- the scheduler's job ----------------------------------------------------------------

def run_due(settings: Settings, store: Store, now: float | None = None,
            emit: Emit | None = None) -> list[str]:
    """Order every certificate that is due (new names, renewals, retries); the sites
    that got one."""
    if not settings.acme_enabled:
        return []
    at = time.time() if now is None else now
    states = store.list_tls_sites()
    done = []
    for site in sites(store):
        state = states.get(site, TlsSite(site))
        if due(state, wanted(settings, store, site), at) is None:
            continue
        with contextlib.suppress(Conflict):     # being ordered by a command right now
            if issue(settings, store, site, emit or (lambda _line: None), now=at):
                done.append(site)
    return done


# ---- what `opus certs` says ---------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Status:
    site: str
    state: TlsSite
    domains: list[str]
    https: list[str]             # names served over https
    pending: str | None          # why a certificate will be ordered (None: nothing due)

    def as_json(self) -> dict[str, object]:
        s = self.state
        return {"site": self.site, "auto": s.auto, "redirect": s.redirect, "source": s.source,
                "covers": list(s.domains), "https": self.https, "domains": self.domains,
                "not_before": s.not_before, "not_after": s.not_after, "serial": s.serial,
                "issuer": s.issuer, "pending": self.pending, "failures": s.failures,
                "last_error": s.last_error, "failed_at": s.failed_at, "retry_at": s.retry_at}


def status(settings: Settings, store: Store, site: str, now: float | None = None) -> Status:
    state = store.tls_site(site)
    names = domains(settings, store, site)
    https = [d for d in names if state.source and covers(list(state.domains), d)]
    pending = why_order(state, wanted(settings, store, site), time.time() if now is None
                        else now) if settings.acme_enabled else None
    return Status(site, state, names, https, pending)


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


def describe(settings: Settings, found: Status) -> list[str]:
    """`opus certs APP` in words."""
    s = found.state
    lines = []
    if s.source is None:
        lines.append("Certificate:  none; served over http only")
    else:
        origin = (f"ordered from {s.issuer or 'the ACME server'}" if s.source == "acme"
                  else "the operator's own")
        lines += [f"Certificate:  {origin}",
                  f"  covers      {', '.join(s.domains)}",
                  f"  valid       {_when(s.not_before or 0)} to {_when(s.not_after or 0)}",
                  f"  serial      {s.serial}"]
        if s.source == "acme" and s.not_before and s.not_after:
            lines.append(f"  renews from {_when(renew_at(s.not_before, s.not_after))}")
    lines.append(f"https:        {', '.join(found.https) or 'none yet'} "
                 f"(port {settings.tls_port})")
    plain = [d for d in found.domains if d not in found.https]
    if plain:
        lines.append(f"http only:    {', '.join(plain)}")
    if not settings.acme_enabled:
        auto = "off for this host (acme_directory = off)"
    else:
        auto = "on" if s.auto else "off (opus certs:auto APP on)"
    lines.append(f"Automatic:    {auto}")
    lines.append(f"Redirect:     {'on: http -> https, and HSTS' if s.redirect else 'off'}")
    if found.pending and s.auto:
        lines.append(f"Pending:      {found.pending}")
    if s.last_error:
        lines.append(f"Last order failed at {_when(s.failed_at or 0)} "
                     f"({s.failures} in a row): {s.last_error}")
        if s.retry_at and s.auto:
            lines.append(f"Opus tries again at {_when(s.retry_at)} "
                         "(or now: opus certs:auto APP on)")
    return lines
