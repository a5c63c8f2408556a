"""The dashboard over real HTTP through the front (opus.localhost), on the session's Opus:
a copied session cookie stops working at sign-out; failed sign-ins slow down one address
for one user, never the user elsewhere, and a forged X-Forwarded-For changes nothing; a
collaborator taken off an app stops receiving its live logs, in the browser and over
SSH (`logs -t`), while lines keep coming."""

from __future__ import annotations

import http.client
import re
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Opus, SshKey, make_key

PASSWORD = "http test password 1"
HOST = "opus.localhost"


class Browser:
    """One client of the front, from one loopback address, keeping its session cookie."""

    def __init__(self, opus: Opus, source: str = "127.0.0.1") -> None:
        self.opus, self.source, self.cookie = opus, source, ""

    def request(self, method: str, path: str, form: dict[str, str] | None = None,
                headers: dict[str, str] | None = None,
                timeout: float = 30) -> tuple[int, str]:
        response, conn = self.open(method, path, form, headers, timeout)
        try:
            return response.status, response.read().decode("utf-8", "replace")
        finally:
            conn.close()

    def open(self, method: str, path: str, form: dict[str, str] | None = None,
             headers: dict[str, str] | None = None,
             timeout: float = 30) -> tuple[http.client.HTTPResponse, http.client.HTTPConnection]:
        conn = http.client.HTTPConnection("127.0.0.1", self.opus.http_port, timeout=timeout,
                                          source_address=(self.source, 0))
        sent = {"Host": HOST, **({"Cookie": self.cookie} if self.cookie else {}),
                **(headers or {})}
        body = None
        if form is not None:
            body = urllib.parse.urlencode(form)
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        conn.request(method, path, body=body, headers=sent)
        response = conn.getresponse()
        found = re.match(r"opus_session=([^;]*)", response.getheader("Set-Cookie") or "")
        if found:
            self.cookie = f"opus_session={found.group(1)}" if found.group(1) else ""
        return response, conn

    def token(self, path: str = "/signin") -> str:
        _status, page = self.request("GET", path)
        found = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert found, page[:500]
        return found.group(1)

    def sign_in(self, user: str, password: str = PASSWORD,
                headers: dict[str, str] | None = None) -> int:
        status, _page = self.request("POST", "/signin", {
            "user": user, "password": password, "csrf_token": self.token()}, headers)
        return status


@pytest.fixture(scope="module")
def people(opus: Opus, admin_key: SshKey,
           tmp_path_factory: pytest.TempPathFactory) -> dict[str, SshKey]:
    """httpadmin (an admin) and httpdev, who collaborates on httpapp (httpadmin's). (The
    session's first user, admin_key's, is made first: it becomes an admin.)"""
    keys = tmp_path_factory.mktemp("http-keys")
    made = {}
    for name, role in (("httpadmin", "admin"), ("httpdev", "developer")):
        made[name] = make_key(keys, name)
        opus.cli("users:add", name, "--role", role)
        opus.cli("keys:add", name, str(made[name].public))
        opus.cli("users:passwd", name, input=PASSWORD + "\n")
    return made


def test_a_copied_cookie_stops_working_at_sign_out(opus: Opus,
                                                   people: dict[str, SshKey]) -> None:
    browser = Browser(opus)
    assert browser.sign_in("httpdev") == 303
    thief = Browser(opus, "127.0.0.3")
    thief.cookie = browser.cookie
    assert thief.request("GET", "/")[0] == 200
    assert browser.request("POST", "/signout", {"csrf_token": browser.token("/")})[0] == 303
    status, _page = thief.request("GET", "/")
    assert status == 302, "the copied cookie still works after sign-out"


def test_failed_sign_ins_from_one_address_never_lock_the_user_out_elsewhere(
        opus: Opus, people: dict[str, SshKey]) -> None:
    attacker = Browser(opus, "127.0.0.1")
    codes = [attacker.sign_in("httpadmin", "wrong password") for _ in range(6)]
    assert codes == [401] * 5 + [429], codes
    # The front appends the address it saw to X-Forwarded-For; the dashboard trusts that
    # one hop only, so a forged header is not another address.
    forged = attacker.sign_in("httpadmin", headers={"X-Forwarded-For": "10.9.8.7"})
    assert forged == 429
    assert Browser(opus, "127.0.0.2").sign_in("httpadmin") == 303
    time.sleep(2.2)         # the backoff of this address for this user is over
    assert attacker.sign_in("httpadmin") == 303


def _writing(log: Path, stop: threading.Event) -> None:
    """The app's web process, logging a line every 0.1 s (the stream is never idle)."""
    number = 0
    while not stop.is_set():
        with log.open("a") as handle:
            handle.write(f"line {number}\n")
        number += 1
        time.sleep(0.1)


@pytest.fixture()
def logging_app(opus: Opus, people: dict[str, SshKey]) -> Iterator[str]:
    """httpapp, httpadmin's, with httpdev a collaborator, its web log growing."""
    if opus.cli("apps:info", "httpapp", check=False).returncode != 0:
        assert subprocess.run(_ssh(opus, people["httpadmin"], "apps:create httpapp"),
                              capture_output=True, check=False).returncode == 0
    opus.cli("access:add", "httpapp", "httpdev")
    log = opus.home / "logs" / "httpapp" / "web.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.touch()
    stop = threading.Event()
    writer = threading.Thread(target=_writing, args=(log, stop))
    writer.start()
    try:
        yield "httpapp"
    finally:
        stop.set()
        writer.join()
        opus.cli("access:remove", "httpapp", "httpdev", check=False)


def _ssh(opus: Opus, key: SshKey, command: str) -> list[str]:
    return ["ssh", "-i", str(key.private), "-o", "IdentitiesOnly=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", "-p", str(opus.ssh_port),
            "git@127.0.0.1", command]


def test_a_revoked_collaborator_stops_receiving_the_live_logs(
        opus: Opus, people: dict[str, SshKey], logging_app: str) -> None:
    browser = Browser(opus)
    assert browser.sign_in("httpdev") == 303
    response, conn = browser.open("GET", f"/apps/{logging_app}/logs/stream?ps=web",
                                  timeout=20)
    tail = subprocess.Popen(_ssh(opus, people["httpdev"], f"logs {logging_app} -t --ps web"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    try:
        assert response.status == 200
        lines = 0
        while lines < 5:
            lines += response.readline().startswith(b"data: ")
        assert tail.stdout is not None
        assert b"line " in tail.stdout.readline()
        opus.cli("access:remove", logging_app, "httpdev")
        revoked = time.monotonic()
        while response.readline():     # lines keep coming until the stream ends
            assert time.monotonic() - revoked < 8, "the stream went on after revocation"
        ended = time.monotonic() - revoked
        _out, err = tail.communicate(timeout=8)
        assert tail.returncode == 3, err
        assert b"not found, or you may not use it" in err
    finally:
        conn.close()
        if tail.poll() is None:
            tail.kill()
            tail.wait()
    assert ended < 5, ended
