"""The dashboard's views through Flask's test client, on an Opus home of their own (no
running Opus: the apps here are created but not deployed). Sign-in, the CSRF token,
throttling, escaping, and who may see and do what."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from opus_paas import settings as settings_module
from opus_paas import users
from opus_paas.access import OPERATOR
from opus_paas.settings import Settings
from opus_paas.store import Store
from web import auth, create_app

PASSWORD = "a long enough password"
HOSTILE = '<script>alert("x")</script>'


@pytest.fixture()
def home(tmp_path: Path) -> Settings:
    settings = settings_module.load({"OPUS_HOME": str(tmp_path / "opus")})
    store = Store(settings.db_path)
    store.init()
    for name, role in (("root", "admin"), ("dev1", "developer"), ("dev2", "developer")):
        store.create_user(name, role)
        users.set_password(store, OPERATOR, name, PASSWORD)
    dev1 = store.get_user("dev1")
    assert dev1 is not None
    store.create_app("shop", dev1, {"SECRET": HOSTILE})
    return settings


@pytest.fixture()
def app(home: Settings) -> Flask:
    return create_app(home, {"TESTING": True})


def csrf(client: FlaskClient, path: str = "/signin") -> str:
    page = client.get(path)
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert found, page.text
    return found.group(1)


def signed_in(app: Flask, user: str) -> FlaskClient:
    client = app.test_client()
    reply = client.post("/signin", data={"user": user, "password": PASSWORD,
                                         "csrf_token": csrf(client)})
    assert reply.status_code == 303, reply.text
    return client


def send(client: FlaskClient, path: str, data: dict[str, str], *,
         page: str = "/apps/shop") -> TestResponse:
    """Post a form as `page` would (with its CSRF token) and follow where it leads."""
    return client.post(path, data={**data, "csrf_token": csrf(client, page)},
                       follow_redirects=True)


def store_of(settings: Settings) -> Store:
    return Store(settings.db_path)


# ---- sign-in ---------------------------------------------------------------------------

def test_every_route_needs_a_signed_in_user(app: Flask) -> None:
    client = app.test_client()
    token = csrf(client)          # a session with a token, but nobody signed in
    checked = 0
    for rule in app.url_map.iter_rules():
        if rule.endpoint in ("static", "auth.signin"):
            continue
        built = rule.build({"name": "shop", "build_id": 1}, append_unknown=False)
        assert built is not None
        path = built[1]
        for method in sorted((rule.methods or set()) & {"GET", "POST"}):
            reply = client.open(path, method=method, data={"csrf_token": token})
            assert reply.status_code in (302, 401), (method, path, reply.status_code)
            if reply.status_code == 302:
                assert reply.headers["Location"].startswith("/signin?next=")
            checked += 1
    assert checked >= 18
    assert store_of(app.config["OPUS_SETTINGS"]).get_app("shop") is not None


def test_signing_in_and_out(app: Flask) -> None:
    client = signed_in(app, "root")
    page = client.get("/")
    assert page.status_code == 200 and "shop" in page.text
    cookie = client.get_cookie("opus_session")
    assert cookie is not None
    assert cookie.http_only and cookie.same_site == "Lax"
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    token = csrf(client, "/")
    assert client.post("/signout", data={"csrf_token": token}).status_code == 303
    assert client.get("/").status_code == 302


def test_wrong_passwords_are_refused_alike_and_then_throttled(app: Flask) -> None:
    client = app.test_client()
    token = csrf(client)
    unknown = client.post("/signin", data={"user": "nobody", "password": PASSWORD,
                                            "csrf_token": token})
    wrong = client.post("/signin", data={"user": "dev1", "password": "wrong",
                                          "csrf_token": token})
    assert unknown.status_code == wrong.status_code == 401
    assert "Wrong user name or password" in unknown.text and "Wrong user name" in wrong.text
    for _ in range(auth.FREE_FAILURES - 1):
        client.post("/signin", data={"user": "dev1", "password": "wrong", "csrf_token": token})
    # Slowed down now from this address, even with the right password; another user is
    # not.
    locked = client.post("/signin", data={"user": "dev1", "password": PASSWORD,
                                          "csrf_token": token})
    assert locked.status_code == 429 and "Too many failed sign-ins" in locked.text
    assert "try again in 2 seconds" in locked.text
    assert client.get("/").status_code == 302
    signed_in(app, "dev2")


def test_the_address_is_throttled_too(app: Flask) -> None:
    client = app.test_client()
    token = csrf(client)
    for number in range(auth.MAX_ADDRESS_FAILURES):
        client.post("/signin", data={"user": f"guess{number}", "password": "x",
                                     "csrf_token": token})
    locked = client.post("/signin", data={"user": "root", "password": PASSWORD,
                                          "csrf_token": token})
    assert locked.status_code == 429


def test_a_new_password_ends_other_sessions(app: Flask, home: Settings) -> None:
    client = signed_in(app, "dev1")
    users.set_password(store_of(home), OPERATOR, "dev1", "another long password")
    assert client.get("/").status_code == 302


def test_a_removed_user_is_signed_out(app: Flask, home: Settings) -> None:
    client = signed_in(app, "dev2")
    users.remove_user(store_of(home), OPERATOR, "dev2")
    assert client.get("/").status_code == 302


@pytest.mark.parametrize("target", ["//evil.example/", "https://evil.example/", "/\\evil",
                                    "javascript:alert(1)"])
def test_sign_in_never_sends_you_to_another_site(app: Flask, target: str) -> None:
    client = app.test_client()
    reply = client.post("/signin", data={"user": "root", "password": PASSWORD,
                                         "next": target, "csrf_token": csrf(client)})
    assert reply.headers["Location"] == "/"


def test_no_setup_page_and_no_user_without_a_password(app: Flask, home: Settings) -> None:
    store = store_of(home)
    store.create_user("nopass", "admin")
    client = app.test_client()
    reply = client.post("/signin", data={"user": "nopass", "password": "",
                                         "csrf_token": csrf(client)})
    assert reply.status_code == 401
    assert client.get("/setup").status_code in (401, 404)


# ---- CSRF ------------------------------------------------------------------------------

@pytest.mark.parametrize("token", [None, "", "forged-token"])
def test_a_form_without_the_right_token_is_refused(app: Flask, home: Settings,
                                                    token: str | None) -> None:
    client = signed_in(app, "dev1")
    data = {"key": "FOO", "value": "bar"}
    if token is not None:
        data["csrf_token"] = token
    reply = client.post("/apps/shop/config", data=data)
    assert reply.status_code == 400 and "reload the page" in reply.text
    app_row = store_of(home).get_app("shop")
    assert app_row is not None and "FOO" not in store_of(home).config(app_row)


def test_a_form_with_the_token_works(app: Flask, home: Settings) -> None:
    client = signed_in(app, "dev1")
    reply = client.post("/apps/shop/config", data={"key": "FOO", "value": "bar",
                                                    "csrf_token": csrf(client, "/apps/shop")})
    assert reply.status_code == 303
    app_row = store_of(home).get_app("shop")
    assert app_row is not None and store_of(home).config(app_row)["FOO"] == "bar"
    page = client.get("/apps/shop")
    assert "Set FOO; the next deploy takes it." in page.text


@pytest.mark.parametrize(("path", "data", "said"), [
    ("/apps/shop/config", {"key": "BAD KEY", "value": "x"}, "invalid config key"),
    ("/apps/shop/config", {"key": "A;rm -rf /", "value": "x"}, "invalid config key"),
    ("/apps/shop/config", {"key": "NUL", "value": "a\0b"}, "NUL byte"),
    ("/apps/shop/config/unset", {"key": "../../etc"}, "invalid config key"),
    ("/apps/shop/domains", {"domain": "evil.com\nListen 80"}, "invalid domain"),
    ("/apps/shop/domains", {"domain": "opus.localhost"}, "Opus keeps for app names"),
    ("/apps/shop/rollback", {"version": "v1;ls"}, "choose a release"),
    ("/apps/shop/scale", {"scale-web;x": "1"}, "invalid process type"),
])
def test_hostile_form_values_are_refused_with_a_message(app: Flask, home: Settings, path: str,
                                                        data: dict[str, str],
                                                        said: str) -> None:
    client = signed_in(app, "dev1")
    reply = client.post(path, data={**data, "csrf_token": csrf(client, "/apps/shop")},
                        headers={"Referer": "http://evil.example/"}, follow_redirects=True)
    assert reply.request.path == "/apps/shop"        # back to the app, not to the referrer
    assert said in reply.text, reply.text
    store = store_of(home)
    app_row = store.get_app("shop")
    assert app_row is not None
    assert store.config(app_row) == {"SECRET": HOSTILE} and store.domains(app_row) == []


def test_the_sign_in_form_needs_its_token_too(app: Flask) -> None:
    client = app.test_client()
    reply = client.post("/signin", data={"user": "root", "password": PASSWORD})
    assert reply.status_code == 400
    assert client.get("/").status_code == 302


# ---- escaping --------------------------------------------------------------------------

def test_config_values_are_masked_and_escaped(app: Flask) -> None:
    page = signed_in(app, "dev1").get("/apps/shop").text
    assert HOSTILE not in page
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page
    assert re.search(r"<details class=\"reveal\">\s*<summary>•+", page)


def test_log_lines_are_escaped(app: Flask, home: Settings) -> None:
    logs = home.logs_dir / "shop"
    logs.mkdir(parents=True)
    (logs / "web.log").write_text(f"2026-12-01T00:00:00.000000Z {HOSTILE}\n")
    page = signed_in(app, "dev1").get("/apps/shop/logs").text
    assert HOSTILE not in page and "&lt;script&gt;" in page


def test_build_output_is_escaped_and_names_no_server_path(app: Flask, home: Settings) -> None:
    store = store_of(home)
    app_row = store.get_app("shop")
    assert app_row is not None
    log = home.logs_dir / "shop" / "build-1.log"
    log.parent.mkdir(parents=True)
    log.write_text(f"-----> {HOSTILE} in {home.home}/apps/shop\n")
    build_id = store.start_build(app_row, "a" * 40, log)
    page = signed_in(app, "dev1").get(f"/apps/shop/builds/{build_id}").text
    assert HOSTILE not in page and "&lt;script&gt;" in page
    assert str(home.home) not in page and "$OPUS_HOME/apps/shop" in page


def test_live_logs_stream_new_lines_as_json(app: Flask, home: Settings) -> None:
    logs = home.logs_dir / "shop"
    logs.mkdir(parents=True)
    (logs / "web.log").write_text("2026-12-01T00:00:00.000000Z old line\n")
    client = signed_in(app, "dev1")
    reply = client.get("/apps/shop/logs/stream?ps=web", buffered=False)
    assert reply.status_code == 200 and reply.mimetype == "text/event-stream"
    chunks = iter(reply.response)
    assert bytes(next(chunks)).startswith(b"retry:")  # type: ignore[arg-type]

    def write_later() -> None:
        time.sleep(0.5)
        with (logs / "web.log").open("a") as out:
            out.write(f"2026-12-01T00:00:01.000000Z {HOSTILE}\n")

    writer = threading.Thread(target=write_later)
    writer.start()
    event = bytes(next(chunks)).decode()  # type: ignore[arg-type]
    writer.join()
    reply.close()
    assert event.startswith("data: ")
    entry = json.loads(event.removeprefix("data: "))
    assert entry == {"at": "2026-12-01T00:00:01.000000Z", "source": "web.1", "text": HOSTILE}


def test_a_hostile_process_type_is_refused(app: Flask) -> None:
    client = signed_in(app, "dev1")
    for kind in ("../../etc", "web;rm", "a" * 100):
        assert client.get(f"/apps/shop/logs?ps={kind}").status_code == 400


# ---- who may see and do what -----------------------------------------------------------

def test_a_developer_cannot_see_or_touch_another_developers_app(app: Flask,
                                                                  home: Settings) -> None:
    stranger = signed_in(app, "dev2")
    assert "shop" not in stranger.get("/").text
    token = csrf(stranger, "/")
    for path in ("/apps/shop", "/apps/shop/logs", "/apps/shop/logs/stream",
                 "/apps/shop/builds/1"):
        reply = stranger.get(path)
        assert reply.status_code == 404, path
        assert "not found, or you may not use it" in reply.text
    for path, data in (("/apps/shop/scale", {"scale-web": "3"}),
                       ("/apps/shop/restart", {}),
                       ("/apps/shop/rollback", {"version": "1"}),
                       ("/apps/shop/config", {"key": "EVIL", "value": "1"}),
                       ("/apps/shop/config/unset", {"key": "SECRET"}),
                       ("/apps/shop/domains", {"domain": "evil.example.com"}),
                       ("/apps/shop/access", {"user": "dev2"}),
                       ("/apps/shop/destroy", {"confirm": "shop"})):
        reply = stranger.post(path, data={**data, "csrf_token": token})
        assert reply.status_code == 404, (path, reply.status_code)
    store = store_of(home)
    app_row = store.get_app("shop")
    assert app_row is not None
    assert store.config(app_row) == {"SECRET": HOSTILE} and store.domains(app_row) == []
    # The owner and an admin do see it.
    assert "shop" in signed_in(app, "dev1").get("/").text
    assert signed_in(app, "root").get("/apps/shop").status_code == 200


def test_only_admins_manage_users(app: Flask, home: Settings) -> None:
    developer = signed_in(app, "dev1")
    token = csrf(developer, "/")
    assert developer.get("/users").status_code == 403
    for path, data in (("/users", {"name": "mallory", "role": "admin"}),
                       ("/users/dev1/role", {"role": "admin"}),
                       ("/users/root/remove", {}),
                       ("/users/root/password", {"password": "taken over password"})):
        developer.post(path, data={**data, "csrf_token": token})
    store = store_of(home)
    root, dev1 = store.get_user("root"), store.get_user("dev1")
    assert store.get_user("mallory") is None and dev1 is not None and not dev1.is_admin
    assert root is not None and users.check_password(PASSWORD, store.password_hash(root))
    admin = signed_in(app, "root")
    added = send(admin, "/users", {"name": "carol", "role": "developer"}, page="/users")
    assert "Added carol (developer)" in added.text and store.get_user("carol") is not None
    bad = send(admin, "/users", {"name": "Bad;Name", "role": "developer"}, page="/users")
    assert "invalid user name" in bad.text


def test_keys_page_shows_own_keys_and_adds_them(app: Flask, home: Settings,
                                                tmp_path: Path) -> None:
    import subprocess
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "dev1-workstation",
                    "-f", str(tmp_path / "k")], check=True)
    public = (tmp_path / "k.pub").read_text()
    dev1 = signed_in(app, "dev1")
    added = dev1.post("/keys", data={"public_key": public, "csrf_token": csrf(dev1, "/keys")},
                      follow_redirects=True)
    assert "Added key SHA256:" in added.text and "dev1-workstation" in added.text
    # Another developer sees none of it; a developer cannot add a key for someone else.
    dev2 = signed_in(app, "dev2")
    assert "dev1-workstation" not in dev2.get("/keys").text
    other = dev2.post("/keys", data={"user": "root", "public_key": public,
                                     "csrf_token": csrf(dev2, "/keys")}, follow_redirects=True)
    assert "only an admin may add keys for another user" in other.text
    assert "dev1-workstation" in signed_in(app, "root").get("/keys").text


def test_scale_values_are_checked(app: Flask) -> None:
    client = signed_in(app, "dev1")
    token = csrf(client, "/apps/shop")
    for value in ("-1", "²", "1e3", "99999999"):
        reply = client.post("/apps/shop/scale", data={"scale-web": value, "csrf_token": token},
                            follow_redirects=True)
        assert "give a number of processes" in reply.text, value


@pytest.fixture(autouse=True)
def _no_threads_left() -> Iterator[None]:
    before = threading.active_count()
    yield
    deadline = time.monotonic() + 3
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)


# ---- what a review of the first version found ------------------------------------------

def _timed_signin(app: Flask, user: str) -> float:
    client = app.test_client()
    token = csrf(client)
    started = time.perf_counter()
    client.post("/signin", data={"user": user, "password": "wrong", "csrf_token": token})
    return time.perf_counter() - started


def test_an_unknown_user_takes_as_long_as_a_wrong_password(app: Flask) -> None:
    unknown = sorted(_timed_signin(app, f"ghost{n}") for n in range(3))[1]
    known = sorted(_timed_signin(app, name) for name in ("root", "dev1", "dev2"))[1]
    assert unknown > known * 0.6, (unknown, known)


def test_attempts_sent_at_once_are_all_counted(app: Flask) -> None:
    codes: list[int] = []

    def guess() -> None:
        client = app.test_client()
        token = csrf(client)
        codes.append(client.post("/signin", data={"user": "dev1", "password": "wrong",
                                                  "csrf_token": token}).status_code)

    threads = [threading.Thread(target=guess) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert codes.count(401) <= auth.FREE_FAILURES and codes.count(429) >= 7


def test_a_successful_sign_in_does_not_count_against_the_address(app: Flask) -> None:
    for _ in range(auth.MAX_ADDRESS_FAILURES + 2):
        signed_in(app, "root")


@pytest.mark.parametrize("token", ["é", "☃" * 40, "x\0y"])
def test_a_strange_token_is_refused_not_an_error(app: Flask, token: str) -> None:
    client = app.test_client()
    csrf(client)
    reply = client.post("/signin", data={"user": "root", "password": PASSWORD,
                                         "csrf_token": token})
    assert reply.status_code == 400


def test_sign_in_keeps_next_to_ascii_paths(app: Flask) -> None:
    client = app.test_client()
    reply = client.post("/signin", data={"user": "root", "password": PASSWORD, "next": "/一",
                                         "csrf_token": csrf(client)})
    assert reply.headers["Location"] == "/"


def test_going_back_never_leaves_the_dashboard(app: Flask) -> None:
    client = signed_in(app, "dev1")
    token = csrf(client, "/apps/shop")
    for referrer in ("http://localhost//evil.example/x", "http://localhost/\\evil",
                     "http://evil.example/apps/shop"):
        reply = client.post("/apps/shop/config", data={"key": "K", "value": "v",
                                                       "csrf_token": token},
                            headers={"Referer": referrer})
        assert reply.headers["Location"] == "/apps/shop", referrer


def test_messages_stay_small_enough_for_the_cookie(app: Flask) -> None:
    client = signed_in(app, "dev1")
    reply = client.post("/apps/shop/domains", data={"domain": "é" * 250,
                                                    "csrf_token": csrf(client, "/apps/shop")})
    assert reply.status_code == 303
    cookie = client.get_cookie("opus_session")
    assert cookie is not None and len(cookie.value) < 3000
    assert "invalid domain" in client.get("/apps/shop").text


def test_a_field_too_long_is_refused_not_cut(app: Flask, home: Settings) -> None:
    client = signed_in(app, "dev1")
    reply = send(client, "/apps/shop/config", {"key": "BIG", "value": "x" * 70_000})
    assert "value is longer than 65536 characters" in reply.text
    app_row = store_of(home).get_app("shop")
    assert app_row is not None and "BIG" not in store_of(home).config(app_row)


def test_changing_your_own_password_needs_the_current_one(app: Flask, home: Settings) -> None:
    client = signed_in(app, "dev1")
    token = csrf(client, "/keys")
    refused = client.post("/users/dev1/password", data={"password": "a new long password",
                                                        "current": "wrong",
                                                        "csrf_token": token},
                          follow_redirects=True)
    assert "current password is not right" in refused.text
    dev1 = store_of(home).get_user("dev1")
    assert dev1 is not None
    assert users.check_password(PASSWORD, store_of(home).password_hash(dev1))
    changed = client.post("/users/dev1/password", data={"password": "a new long password",
                                                        "current": PASSWORD,
                                                        "csrf_token": token})
    assert changed.status_code == 303
    assert client.get("/keys").status_code == 200        # this session goes on


def test_the_cookie_is_secure_when_the_front_says_https(app: Flask) -> None:
    client = app.test_client()
    client.get("/signin", headers={"X-Forwarded-Proto": "https"})
    cookie = client.get_cookie("opus_session")
    assert cookie is not None and cookie.secure
    plain = app.test_client()
    plain.get("/signin")
    cookie = plain.get_cookie("opus_session")
    assert cookie is not None and not cookie.secure


def test_live_log_streams_are_capped_per_user(app: Flask, home: Settings) -> None:
    from web import logs as web_logs
    logs = home.logs_dir / "shop"
    logs.mkdir(parents=True)
    (logs / "web.log").write_text("")
    client = signed_in(app, "dev1")
    open_ = [client.get("/apps/shop/logs/stream", buffered=False)
             for _ in range(web_logs.MAX_STREAMS_PER_USER)]
    assert all(r.status_code == 200 for r in open_)
    refused = client.get("/apps/shop/logs/stream", buffered=False)
    assert refused.status_code == 503 and "close a log tab" in refused.text
    assert signed_in(app, "root").get("/apps/shop/logs/stream",
                                      buffered=False).status_code == 200
    open_.pop().close()
    again = client.get("/apps/shop/logs/stream", buffered=False)
    assert again.status_code == 200
    for reply in [*open_, again]:
        reply.close()


def test_a_stream_ends_when_its_user_may_no_longer_read_the_app(
        app: Flask, home: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from web import logs as web_logs
    monkeypatch.setattr(web_logs, "HEARTBEAT_SECONDS", 0.2)
    logs = home.logs_dir / "shop"
    logs.mkdir(parents=True)
    (logs / "web.log").write_text("")
    reply = signed_in(app, "dev1").get("/apps/shop/logs/stream", buffered=False)
    chunks = iter(reply.response)
    assert bytes(next(chunks)).startswith(b"retry:")  # type: ignore[arg-type]
    assert bytes(next(chunks)).startswith(b": still here")  # type: ignore[arg-type]
    users.set_password(store_of(home), OPERATOR, "dev1", "changed long password")
    with pytest.raises(StopIteration):
        next(chunks)
    reply.close()


def test_an_app_whose_release_is_gone_still_has_a_page(app: Flask, home: Settings) -> None:
    store = store_of(home)
    app_row = store.get_app("shop")
    assert app_row is not None
    store.set_live(app_row, 3, 20000)
    page = signed_in(app, "dev1").get("/apps/shop")
    assert page.status_code == 200 and "release v3" in page.text


def test_the_owner_manages_who_may_use_the_app(app: Flask, home: Settings) -> None:
    owner = signed_in(app, "dev1")
    added = send(owner, "/apps/shop/access", {"user": "dev2"})
    assert "dev2 may now push to and manage the config of shop" in added.text
    collaborator = signed_in(app, "dev2")
    page = collaborator.get("/apps/shop")
    assert page.status_code == 200
    assert "Add collaborator" not in page.text and "Destroy shop" not in page.text
    token = csrf(collaborator, "/apps/shop")
    for path, data in (("/apps/shop/access", {"user": "root"}),
                       ("/apps/shop/access/remove", {"user": "dev2"}),
                       ("/apps/shop/destroy", {"confirm": "shop"})):
        reply = collaborator.post(path, data={**data, "csrf_token": token},
                                  follow_redirects=True)
        assert "only dev1 (the owner) or an admin may do that" in reply.text, path
    store = store_of(home)
    app_row = store.get_app("shop")
    assert app_row is not None and store.collaborators(app_row) == ["dev2"]
    nobody = send(owner, "/apps/shop/access", {"user": "ghost"})
    assert "no user ghost" in nobody.text
    send(owner, "/apps/shop/access/remove", {"user": "dev2"})
    assert collaborator.get("/apps/shop").status_code == 404


def test_destroying_needs_the_name_typed(app: Flask, home: Settings) -> None:
    owner = signed_in(app, "dev1")
    wrong = send(owner, "/apps/shop/destroy", {"confirm": "shop2"})
    assert "type its name in the box" in wrong.text
    assert store_of(home).get_app("shop") is not None
    done = send(owner, "/apps/shop/destroy", {"confirm": "shop"})
    assert done.request.path == "/" and "Destroyed shop" in done.text
    assert store_of(home).get_app("shop") is None


def test_the_app_page_says_why_an_order_failed_and_when_it_retries(
        app: Flask, home: Settings) -> None:
    store = store_of(home)
    store.add_domain(store.get_app("shop"), "www.shop.test")    # type: ignore[arg-type]
    store.set_tls_site("shop", failures=2, last_error="the challenge failed: <b>x</b>",
                          failed_at=1_800_000_000.0, retry_at=1_800_000_600.0)
    page = signed_in(app, "dev1").get("/apps/shop").get_data(as_text=True)
    assert "<h2>HTTPS</h2>" in page
    assert "the challenge failed: &lt;b&gt;x&lt;/b&gt;" in page       # escaped
    assert "(2 in a row)" in page and "Opus tries again at 2027-01-15 08:10:00 UTC" in page
    assert "Certificate:  none; served over http only" in page
    assert "opus certs:auto shop on" in page


@pytest.mark.parametrize(("pair", "address", "wait"), [
    ([100.0] * 5, [100.0] * 5, 0),                          # the free failures
    ([100.0] * 6, [100.0] * 6, 2),                          # then 2 s after the last…
    ([*[98.0] * 5, 100.0], [100.0] * 6, 0),
    ([*[90.0] * 5, 100.0, 100.0], [100.0] * 7, 4),          # …4 s, 8 s, …
    ([*[0.0] * 15, 100.0, 100.0], [100.0] * 7, 15 * 60),    # at most the window
    ([100.0], [*[99.0] * 20, 100.0], 899),                  # a busy address waits
    ([100.0], [99.0] * 20, 0),
])
def test_the_backoff_grows_per_address_and_user(pair: list[float], address: list[float],
                                                wait: int) -> None:
    assert auth.wait_before(pair, address, 100.0) == wait


def test_the_right_password_gets_in_after_the_backoff(app: Flask,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "BACKOFF_BASE", 0.3)
    client = app.test_client()
    token = csrf(client)
    for _ in range(auth.FREE_FAILURES + 1):
        client.post("/signin", data={"user": "root", "password": "wrong", "csrf_token": token})
    time.sleep(0.7)
    signed_in(app, "root")


def test_signing_out_ends_the_session_for_a_copied_cookie_too(app: Flask) -> None:
    client = signed_in(app, "root")
    cookie = client.get_cookie("opus_session")
    assert cookie is not None
    thief = app.test_client()
    thief.set_cookie("opus_session", cookie.value)
    assert thief.get("/").status_code == 200
    assert client.post("/signout", data={"csrf_token": csrf(client, "/")}).status_code == 303
    assert thief.get("/").status_code == 302
