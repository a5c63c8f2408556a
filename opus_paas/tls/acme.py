"""Ordering a certificate from an ACME server (RFC 8555) with HTTP-01 challenges.

Built on `acme` and `josepy`, the library certbot itself is built on (maintained by the
EFF with Let's Encrypt; it speaks exactly RFC 8555 and leaves storage and challenge
answering to us). One account per Opus host and ACME directory: its key
(`OPUS_HOME/acme/account.key`, 0600) and URI (`account.json`). Challenge answers are
files in `OPUS_HOME/acme/challenges/`, which the front serves on every host name at
`/.well-known/acme-challenge/` before any app; each is removed once its order ends.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any

import requests
from acme import challenges, client, crypto_util, errors, messages
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from josepy.jwk import JWKRSA

from opus_paas import names
from opus_paas.errors import ServiceError
from opus_paas.output import Emit
from opus_paas.settings import Settings

ORDER_SECONDS = 90         # a whole order, challenges and finalization together
USER_AGENT = "opus-paas"


class OrderFailed(ServiceError):
    """The ACME server did not issue: the message says why, for `opus certs`."""


def _write_private(path: Path, text: str) -> None:
    """`text` into `path` (0600), whole, through a fresh temporary file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(tmp, path)


def challenge_dir(settings: Settings) -> Path:
    return settings.acme_dir / "challenges"


def prepare(settings: Settings) -> None:
    """OPUS_HOME/acme (0711: the front's children pass through to the challenges, and
    read nothing else) and its challenges directory (0755)."""
    settings.acme_dir.mkdir(mode=0o711, exist_ok=True)
    os.chmod(settings.acme_dir, 0o711)  # noqa: S103 (passage only; the key is 0600)
    challenge_dir(settings).mkdir(mode=0o755, exist_ok=True)
    os.chmod(challenge_dir(settings), 0o755)  # noqa: S103 (challenge answers are public)


def _account_key(settings: Settings) -> JWKRSA:
    path = settings.acme_dir / "account.key"
    try:
        pem = path.read_bytes()
    except FileNotFoundError:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        _write_private(path, pem.decode("ascii"))
    loaded = serialization.load_pem_private_key(pem, password=None)
    return JWKRSA(key=loaded)


def _network(settings: Settings, key: JWKRSA) -> client.ClientNetwork:
    net = client.ClientNetwork(key, user_agent=USER_AGENT, timeout=20)
    if settings.acme_ca_bundle:
        # requests takes a CA file where the library says "verify": a private ACME
        # server's own CA (pebble's in the tests).
        net.verify_ssl = settings.acme_ca_bundle  # type: ignore[assignment]
    return net


def _client(settings: Settings) -> client.ClientV2:
    """A client with this host's account at the configured directory (made, with the
    terms of service agreed, the first time)."""
    if not settings.acme_directory.startswith("https://"):
        raise OrderFailed(f"the ACME directory {settings.acme_directory!r} is not an https "
                          "URL; set acme_directory (OPUS_ACME_DIRECTORY) to one, or to off")
    prepare(settings)
    key = _account_key(settings)
    net = _network(settings, key)
    directory = client.ClientV2.get_directory(settings.acme_directory, net)
    acme = client.ClientV2(directory, net)
    record_path = settings.acme_dir / "account.json"
    try:
        record = json.loads(record_path.read_text())
    except (FileNotFoundError, ValueError):
        record = {}
    if record.get("directory") == settings.acme_directory and record.get("uri"):
        net.account = messages.RegistrationResource(body=messages.Registration(),
                                                    uri=record["uri"])
        return acme
    registration = acme.new_account(messages.NewRegistration.from_data(
        email=settings.acme_email or None, terms_of_service_agreed=True))
    _write_private(record_path, json.dumps({"directory": settings.acme_directory,
                                            "uri": registration.uri}))
    return acme


def order(settings: Settings, domains: list[str], key_pem: str, emit: Emit) -> str:
    """A certificate for `domains` (every one answered by HTTP-01 through the front) for
    the key `key_pem`: its full chain as PEM. OrderFailed says why not."""
    for domain in domains:
        names.check_domain(domain)
    written: list[Path] = []
    try:
        acme = _client(settings)
        csr = crypto_util.make_csr(key_pem.encode(), domains)
        placed = acme.new_order(csr)
        for authz in placed.authorizations:
            if authz.body.status == messages.STATUS_VALID:
                continue
            challenge = next((c for c in authz.body.challenges
                              if isinstance(c.chall, challenges.HTTP01)), None)
            if challenge is None:
                raise OrderFailed(f"the ACME server offers no http-01 challenge for "
                                  f"{authz.body.identifier.value}")
            response, validation = challenge.response_and_validation(acme.net.key)
            path = challenge_dir(settings) / challenge.chall.encode("token")
            path.write_text(validation)
            path.chmod(0o644)
            written.append(path)
            emit(f"Answering the http-01 challenge for {authz.body.identifier.value}")
            acme.answer_challenge(challenge, response)
        deadline = datetime.datetime.now() + datetime.timedelta(seconds=ORDER_SECONDS)
        done = acme.poll_and_finalize(placed, deadline)
        return str(done.fullchain_pem)
    except errors.ValidationError as exc:
        raise OrderFailed("the challenge failed: " + _authz_reasons(exc.failed_authzrs)) \
            from None
    except messages.Error as exc:
        raise OrderFailed(_acme_error(exc)) from None
    except errors.TimeoutError:
        raise OrderFailed(f"the ACME server did not finish the order within "
                          f"{ORDER_SECONDS} s") from None
    except requests.exceptions.RequestException as exc:
        raise OrderFailed(f"cannot reach the ACME server at {settings.acme_directory} "
                          f"({type(exc).__name__}); check the host's network and "
                          "acme_directory") from None
    except errors.Error as exc:
        raise OrderFailed(f"the ACME server's answer was not understood: {exc}") from None
    finally:
        for path in written:
            path.unlink(missing_ok=True)


def _acme_error(error: messages.Error) -> str:
    kind = (error.typ or "").rsplit(":", 1)[-1]
    what = {"rateLimited": "rate limit", "rejectedIdentifier": "name refused",
            "dns": "DNS", "connection": "connection", "unauthorized": "unauthorized",
            "caa": "CAA record"}.get(kind, kind or "error")
    return f"{what}: {error.detail or error.description or error}"


def _authz_reasons(failed: list[Any]) -> str:
    reasons = []
    for authz in failed:
        for challenge in authz.body.challenges:
            if challenge.error is not None:
                reasons.append(f"{authz.body.identifier.value}: "
                               f"{_acme_error(challenge.error)}")
    return "; ".join(reasons) or "no reason given"
