"""`opus certs`, `certs:auto`, `certs:add`, `certs:remove`, `https:redirect`.

APP may be `opus` for the dashboard's own certificate (admins only).
"""

from __future__ import annotations

import contextlib

from opus_paas import access
from opus_paas.control.context import STDIN_LIMIT, Command, Context, arity
from opus_paas.errors import UsageError
from opus_paas.front.tls import DASHBOARD_SITE
from opus_paas.supervisor import Supervisor
from opus_paas.tls import certs, pem


def site_for(ctx: Context, name: str) -> str:
    """The site a command names: an app the caller may use, or (admins) the dashboard."""
    if name == DASHBOARD_SITE:
        access.require_admin(ctx.actor, "see or change the dashboard's certificate")
        return DASHBOARD_SITE
    return access.app_for(ctx.store, ctx.actor, name).name


def _switch(value: str, usage: str) -> bool:
    if value not in ("on", "off"):
        raise UsageError(f"usage: {usage}")
    return value == "on"


def cmd_certs(ctx: Context, args: list[str]) -> None:
    arity(ctx.usage, args, 1)
    found = certs.status(ctx.settings, ctx.store, site_for(ctx, args[0]))
    if ctx.json:
        ctx.emit_json(found.as_json())
        return
    for line in certs.describe(ctx.settings, found):
        ctx.out(line.replace("APP", args[0]))


def cmd_certs_auto(ctx: Context, args: list[str]) -> int:
    usage = ctx.usage
    arity(usage, args, 2)
    site, on = site_for(ctx, args[0]), _switch(args[1], usage)
    certs.set_auto(ctx.settings, ctx.store, site, on)
    if not on:
        ctx.out(f"Automatic certificates are off for {args[0]}; the one it has stays "
                "until it expires (opus certs:remove removes it).")
        return 0
    if not ctx.settings.acme_enabled:
        ctx.out("Automatic certificates are on for the app, but this host orders none "
                "(acme_directory = off); set acme_directory to an ACME server.")
        return 1
    if not certs.wanted(ctx.settings, ctx.store, site):
        ctx.out(f"Automatic certificates are on; {args[0]} has no name a CA can check "
                "(*.localhost names never get one): add one with domains:add.")
        return 0
    if certs.issue(ctx.settings, ctx.store, site, ctx.out):
        return 0
    state = ctx.store.tls_site(site)
    ctx.out(f"{args[0]} keeps serving as before. Opus tries again at "
            f"{certs._when(state.retry_at or 0)}; `opus certs {args[0]}` shows the state.")
    return 1


def cmd_certs_add(ctx: Context, args: list[str]) -> None:
    usage = ctx.usage
    arity(usage, args, (2, 3))
    site = site_for(ctx, args[0])
    if args[1:] == ["-"]:
        text = ctx.read_stdin(STDIN_LIMIT)
        chain, key = text, text
    elif len(args) == 3 and not ctx.remote:
        chain, key = _read(args[1], "certificate"), _read(args[2], "key")
    elif ctx.remote:
        raise UsageError(f"over SSH the certificate and key come from standard input: "
                         f"cat CERT KEY | ssh … certs:add {args[0]} -")
    else:
        raise UsageError(f"usage: {usage}")
    pair = certs.add_operator_cert(ctx.settings, ctx.store, site, chain, key)
    chain_count = pair.chain.count("BEGIN CERTIFICATE")
    ctx.out(f"Installed your certificate for {', '.join(pair.facts.names)} on {args[0]} "
            f"(with {chain_count - 1} chain certificate{'s' if chain_count != 2 else ''}), "
            f"valid until {certs._when(pair.facts.not_after)}. Automatic certificates are "
            "off for it now.")


def _read(path: str, what: str) -> str:
    try:
        with open(path, encoding="ascii") as handle:
            return handle.read(pem.MAX_PEM + 1)
    except OSError as exc:
        raise UsageError(f"cannot read the {what} {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not a PEM file; give the {what} in PEM") from None


def cmd_certs_remove(ctx: Context, args: list[str]) -> None:
    arity(ctx.usage, args, 1)
    site = site_for(ctx, args[0])
    certs.remove(ctx.settings, ctx.store, site)
    ctx.out(f"Removed {args[0]}'s certificate: it is served over http only, and no "
            "certificate is ordered for it (opus certs:auto APP on orders one).")


def cmd_https_redirect(ctx: Context, args: list[str]) -> None:
    usage = ctx.usage
    arity(usage, args, 2)
    site, on = site_for(ctx, args[0]), _switch(args[1], usage)
    certs.set_redirect(ctx.settings, ctx.store, site, on)
    https = certs.status(ctx.settings, ctx.store, site).https
    if on:
        ctx.out(f"http now redirects to https for {', '.join(https) or 'no name yet'} "
                "(with Strict-Transport-Security); names without a certificate stay on "
                "http until they have one.")
    else:
        ctx.out(f"{args[0]} answers on http and https alike.")


def wake_scheduler(ctx: Context) -> None:
    """Have the scheduler look for due certificates now (after domains:add)."""
    with contextlib.suppress(Exception):
        Supervisor(ctx.settings).signal("opus-scheduler", "USR1")


COMMANDS = [
    Command("certs", "opus certs APP", "an app's certificate and https state", cmd_certs,
            takes_app=True),
    Command("certs:auto", "opus certs:auto APP on|off",
            "order certificates from the ACME server (and renew them)", cmd_certs_auto,
            takes_app=True),
    Command("certs:add", "opus certs:add APP CERT KEY|-", "install your own certificate",
            cmd_certs_add, takes_app=True,
            note="(-: the PEM chain and key on standard input)"),
    Command("certs:remove", "opus certs:remove APP", "remove an app's certificate",
            cmd_certs_remove, takes_app=True),
    Command("https:redirect", "opus https:redirect APP on|off",
            "redirect http to https (and HSTS)", cmd_https_redirect, takes_app=True),
]
