"""secureops, called as Opus calls it (`python -I -m secureops VERB APP`, a spec on
stdin): a table of hostile requests, each refused and logged; real per-app users
(unique names, removed afterwards) that cannot reach each other's files or processes;
a hostile environment; concurrent calls; and the same checks in same-user mode."""

from __future__ import annotations

import configparser
import dataclasses
import datetime
import grp
import json
import os
import pwd
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from secureops import cli, firewall
from secureops.layout import Denied, Layout
from tests.conftest import require_root, require_tool

FRONT_GROUP = "nogroup"
OPUS_GROUP = "daemon"


@pytest.fixture()
def home(tmp_path: Path) -> Iterator[tuple[Layout, Path]]:
    """An Opus home for secureops and its root-owned config."""
    base = Path(f"/tmp/secureops-{secrets.token_hex(4)}")
    home = base / "opus"
    for path in (home / "apps", home / "supervisor" / "conf.d", home / "logs"):
        path.mkdir(parents=True)
    base.chmod(0o755)
    for path in (home, home / "apps"):
        path.chmod(0o755)
    (home / "front").mkdir()
    config = tmp_path / "secureops.json"
    log = tmp_path / "secureops.log"
    layout = Layout(home=home, conf_d=home / "supervisor" / "conf.d", front=home / "front",
                    logs=home / "logs", log=log, front_group=FRONT_GROUP,
                    front_user="nobody", opus_group=OPUS_GROUP)
    config.write_text(json.dumps({
        "home": str(home), "conf_d": str(layout.conf_d), "front": str(layout.front),
        "logs": str(layout.logs), "log": str(log), "front_group": FRONT_GROUP,
        "front_user": "nobody", "opus_group": OPUS_GROUP,
        "port_rules": "off"}))    # the host's nftables rules are system mode's tests
    config.chmod(0o644)
    try:
        yield layout, config
    finally:
        shutil.rmtree(base, ignore_errors=True)


def call(config: Path, *argv: str, spec: Any = None, raw: str | None = None,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    text = raw if raw is not None else ("" if spec is None else json.dumps(spec))
    return subprocess.run([sys.executable, "-I", "-m", "secureops", "--config", str(config),
                           *argv], input=text, capture_output=True, text=True, timeout=60,
                          env=env if env is not None else {"PATH": "/usr/bin:/bin"},
                          check=False)


def log_lines(layout: Layout) -> list[dict[str, str]]:
    if not layout.log.exists():
        return []
    return [json.loads(line) for line in layout.log.read_text().splitlines()]


def web_program(layout: Layout, app: str, **changes: Any) -> dict[str, Any]:
    slug = layout.app_dir(app) / "releases" / "v1"
    program = {"name": f"{app}-web-v1-p20000",
               "command": [str(slug / ".opus" / "venv" / "bin" / "python"), "-m", "x"],
               "directory": str(slug), "log_name": "web.log",
               "environment": {"HOME": str(layout.app_dir(app) / "home")}}
    program.update(changes)
    return {"programs": [program]}


# ---- the hostile table ------------------------------------------------------------------

APP = "shop"
LONG = "a" * 31
PYTHON = "cpython-3.13.0-linux-x86_64-gnu"


def hostile_requests(layout: Layout) -> list[tuple[list[str], Any, str]]:
    """(argv, spec or raw text, what the refusal says) — each must be refused."""
    other = str(layout.app_dir("other") / "releases" / "v1" / "bin" / "python")
    slug = str(layout.app_dir(APP) / "releases" / "v1")
    return [
        # names
        (["hand-over", ""], None, "invalid app name"),
        (["hand-over", "Shop"], None, "invalid app name"),
        (["hand-over", "-rf"], None, "invalid app name"),
        (["hand-over", "shop;id"], None, "invalid app name"),
        (["hand-over", "shop\nid"], None, "invalid app name"),
        (["hand-over", "../etc"], None, "invalid app name"),
        (["hand-over", "shop/../../etc"], None, "invalid app name"),
        (["hand-over", "..."], None, "invalid app name"),
        (["hand-over", LONG], None, "invalid app name"),
        (["hand-over", "shop-"], None, "invalid app name"),
        (["hand-over", "1shop"], None, "invalid app name"),
        (["hand-over", "opus"], None, "invalid app name"),
        (["hand-over", "sh\u00f6p"], None, "invalid app name"),
        (["hand-over", "shop "], None, "invalid app name"),
        # verbs and arity
        (["chown", APP], None, "usage"),
        (["HAND-OVER", APP], None, "usage"),
        (["run-as-root", APP], None, "usage"),
        (["hand-over"], None, "usage"),
        (["hand-over", APP, "/etc"], None, "usage"),
        ([], None, "usage"),
        # a missing user
        (["hand-over", APP], None, "does not exist"),
        (["programs-install", APP], web_program(layout, APP), "does not exist"),
        # programs: spec injection
        (["programs-install", APP], "not json", "not JSON"),
        (["programs-install", APP], "x" * (1 << 20) + "x", "larger than"),
        (["programs-install", APP], {"programs": "all"}, "must be a list"),
        (["programs-install", APP], {"programs": [], "user": "root"}, "unknown keys"),
        (["programs-install", APP], web_program(layout, APP, user="root"), "unknown keys"),
        (["programs-install", APP], web_program(layout, APP, command=["/bin/sh", "-c", "id"]),
         "not inside the app's releases"),
        (["programs-install", APP], web_program(layout, APP, command=[other]),
         "not inside the app's releases"),
        (["programs-install", APP], web_program(layout, APP, command=[slug + "/../../x"]),
         "not inside the app's releases"),
        (["programs-install", APP], web_program(layout, APP, command=["bin/python"]),
         "not inside the app's releases"),
        (["programs-install", APP], web_program(layout, APP, command=[]), "1 to 256"),
        (["programs-install", APP], web_program(layout, APP, command=[slug + "/py\0"]),
         "one line of text"),
        (["programs-install", APP], web_program(layout, APP, directory="/"),
         "not inside the app's releases"),
        (["programs-install", APP], web_program(layout, APP, name="other-web-v1-p20002"),
         "is not one of shop's"),
        (["programs-install", APP], web_program(layout, APP, name="shop.web;x"),
         "is not one of shop's"),
        (["programs-install", APP], web_program(layout, APP, name="opus-sshd"),
         "is not one of shop's"),
        (["programs-install", APP], web_program(layout, APP, log_name="../../etc/passwd"),
         "not a plain log file name"),
        (["programs-install", APP], web_program(layout, APP, log_name="%(here)s.log"),
         "not a plain log file name"),
        (["programs-install", APP], web_program(layout, APP, environment={"LD_PRELOAD": "x"}),
         "is not allowed"),
        (["programs-install", APP], web_program(layout, APP, environment={"A B": "x"}),
         "is not allowed"),
        (["programs-install", APP], web_program(layout, APP, environment={"A": "x\ny"}),
         "one line of text"),
        (["programs-install", APP], web_program(layout, APP, numprocs=100), "whole number"),
        (["programs-install", APP], web_program(layout, APP, numprocs=True), "whole number"),
        (["programs-install", APP], web_program(layout, APP, stopsignal="STOP"), "stopsignal"),
        (["programs-install", APP], {"programs": [web_program(layout, APP)["programs"][0]] * 2},
         "same name"),
        (["programs-install", APP], web_program(layout, APP, environment={"A": "x ;[program:y]"}),
         "cut the value short"),
        (["programs-install", APP], web_program(layout, APP, command=[slug + "/py", "a #b"]),
         "cut the value short"),
        # run: what it runs, where, with what
        (["run", APP], {"argv": ["id"], "cwd": slug, "env": {}}, "absolute path"),
        (["run", APP], {"argv": ["/usr/bin/../bin/id"], "cwd": slug, "env": {}},
         "absolute path"),
        (["run", APP], {"argv": ["/usr/bin/id"], "cwd": "/root", "env": {}}, "not inside"),
        (["run", APP], {"argv": ["/usr/bin/id"], "cwd": str(layout.app_dir("other")),
                        "env": {}}, "not inside"),
        (["run", APP], {"argv": ["/usr/bin/id"], "cwd": slug, "env": {"LD_PRELOAD": "/x"}},
         "is not allowed"),
        (["run", APP], {"argv": ["/usr/bin/id"], "cwd": slug, "env": {"PYTHONHOME": "/x"}},
         "is not allowed"),
        (["run", APP], {"argv": ["/usr/bin/id", "a\0b"], "cwd": slug, "env": {}},
         "text without NUL"),
        (["run", APP], {"argv": ["/usr/bin/id"], "cwd": slug, "env": {"A": "x\0"}},
         "text without NUL"),
        (["run", APP], {"argv": ["/usr/bin/id"], "cwd": slug + "\n"}, "missing keys"),
        (["run", APP], {"argv": ["/usr/bin/id"], "cwd": slug}, "missing keys"),
        (["run", APP], {"argv": ["/usr/bin/id"], "cwd": slug, "env": {}, "user": "root"},
         "unknown keys"),
        (["run", APP], {"argv": ["/usr/bin/id"], "cwd": slug, "env": {}, "rows": 24,
                        "columns": 80}, "unknown keys"),
        # a step on a terminal: the same rules, and a size in range
        (["run-terminal", APP], {"argv": ["/usr/bin/id"], "cwd": slug, "env": {}},
         "missing keys"),
        (["run-terminal", APP], {"argv": ["id"], "cwd": slug, "env": {}, "rows": 24,
                                 "columns": 80}, "absolute path"),
        (["run-terminal", APP], {"argv": ["/usr/bin/id"], "cwd": "/root", "env": {},
                                 "rows": 24, "columns": 80}, "not inside"),
        (["run-terminal", APP], {"argv": ["/usr/bin/id"], "cwd": slug, "env": {},
                                 "rows": 0, "columns": 80}, "whole number"),
        (["run-terminal", APP], {"argv": ["/usr/bin/id"], "cwd": slug, "env": {},
                                 "rows": "24;id", "columns": 80}, "whole number"),
        (["run-terminal", APP], {"argv": ["/usr/bin/id"], "cwd": slug, "env": {},
                                 "rows": 24, "columns": 100_000}, "whole number"),
        # removals: a version, nothing else
        (["release-remove", APP], {"version": "../../etc"}, "whole number"),
        (["release-remove", APP], {"version": 0}, "whole number"),
        (["release-remove", APP], {"version": 1, "path": "/etc"}, "unknown keys"),
        # the front's copy of static files: an app name and a version, never a path
        (["static-install", "../etc"], {"version": 1, "live": True}, "invalid app name"),
        (["static-install", "shop/../other"], {"version": 1, "live": True},
         "invalid app name"),
        (["static-install"], {"version": 1, "live": True}, "usage"),
        (["static-install", APP, "v1"], {"version": 1, "live": True}, "usage"),
        (["static-install", APP], "not json", "not JSON"),
        (["static-install", APP], {"version": "1", "live": True}, "whole number"),
        (["static-install", APP], {"version": "../../etc", "live": True}, "whole number"),
        (["static-install", APP], {"version": 0, "live": False}, "whole number"),
        (["static-install", APP], {"version": -1, "live": False}, "whole number"),
        (["static-install", APP], {"version": 10**12, "live": False}, "whole number"),
        (["static-install", APP], {"version": True, "live": False}, "whole number"),
        (["static-install", APP], {"version": 1, "live": "yes"}, "true or false"),
        (["static-install", APP], {"version": 1, "live": 1}, "true or false"),
        (["static-install", APP], {"version": 1}, "missing keys"),
        (["static-install", APP], {"version": 1, "live": True, "from": "/etc"},
         "unknown keys"),
        (["static-install", APP], {"version": 1, "live": True, "path": "/etc/opus/front"},
         "unknown keys"),
        (["static-install", APP], [1, True], "must be a JSON object"),
        (["static-install", APP], {"version": 1, "live": False}, "does not exist"),
        (["app-remove", "../etc"], None, "invalid app name"),
        (["app-remove"], None, "usage"),
        # the front: values only, every directive secureops's own
        (["front-install", APP], front_spec(), "usage"),
        (["front-install"], front_spec(include="/tmp/evil.conf"), "unknown keys"),
        (["front-install"], front_spec(token="' || true || '"), "token"),
        (["front-install"], front_spec(scheme="http\nLoadModule x /tmp/x.so"), "scheme"),
        (["front-install"], front_spec(listen_host="0.0.0.0:80\nListen 81"),
         "one line of text"),
        (["front-install"], front_spec(listen_host="127.0.0.1><Directory /"),
         "not an IP address"),
        (["front-install"], front_spec(listen_port=0), "whole number"),
        (["front-install"], front_spec(dashboard={"domain": "opus.localhost",
                                                  "host": "127.0.0.1", "port": 70000,
                                                  "tls": None}),
         "whole number"),
        (["front-install"], front_spec(sites=[site(domains=['x" LoadModule'])]),
         "not a host name"),
        (["front-install"], front_spec(sites=[site(domains=["UPPER.localhost"])]),
         "not a host name"),
        (["front-install"], front_spec(sites=[site(app="../etc")]), "invalid app name"),
        (["front-install"], front_spec(sites=[site(), site(app="other",
                                                           domains=["other.localhost"])]),
         "a port is given to two apps"),
        (["front-install"], front_spec(sites=[site(), site(app="other")]),
         "a host name is given twice"),
        (["front-install"], front_spec(sites=[site(domains=["opus.localhost"])]),
         "a host name is given twice"),
        (["front-install"], front_spec(sites=[site(port=8080, members=[8080])]),
         "the front's or the dashboard's"),
        (["front-install"], front_spec(sites=[site(port=20005)]), "one of its members"),
        (["front-install"], front_spec(sites=[site(port=80, members=[80])]), "whole number"),
        (["front-install"], front_spec(sites=[site(user="root")]), "unknown keys"),
        # interpreters and wheels: a name or a key, never a path
        (["python-install"], {"name": "../../etc"}, "not an interpreter's name"),
        (["python-install"], {"name": f"{PYTHON}/../../etc"}, "not an interpreter's name"),
        (["python-install"], {"name": f"{PYTHON}\n"}, "one line of text"),
        (["python-install"], {"name": PYTHON, "from": "/etc"}, "unknown keys"),
        (["python-install"], [PYTHON], "must be a JSON object"),
        (["python-install", APP], {"name": PYTHON}, "usage"),
        (["python-install"], {"name": "cpython-3.12.9-linux-x86_64-gnu"}, "nothing is staged"),
        (["python-remove"], {"name": "/usr"}, "not an interpreter's name"),
        (["python-remove"], {"name": 3}, "one line of text"),
        (["wheels-install"], {"key": "cp313-../../../etc"}, "not a wheelhouse key"),
        (["wheels-install"], {"key": "cp313-0123456789ABCDEF"}, "not a wheelhouse key"),
        (["wheels-remove"], {"key": ""}, "not a wheelhouse key"),
        # https: values only; certificates only by name, never a path
        (["front-install"], front_spec(https_port=8080), "https_port must differ"),
        (["front-install"], front_spec(https_port="8443\nListen 1"), "whole number"),
        (["front-install"], front_spec(sites=[site(tls=tls(domains=["bank.example"]))]),
         "some of its own domains"),
        (["front-install"], front_spec(sites=[site(tls=tls(domains=[["x"]]))]),
         "some of its own domains"),
        (["front-install"], front_spec(sites=[site(tls=tls(redirect="yes"))]),
         "true or false"),
        (["front-install"], front_spec(sites=[site(tls=tls(serial="1\nSSLEngine off"))]),
         "hex digits"),
        (["front-install"], front_spec(sites=[site(tls=tls(cert="/etc/shadow"))]),
         "unknown keys"),
        (["front-install"], front_spec(dashboard={
            "domain": "opus.localhost", "host": "127.0.0.1", "port": 8090,
            "tls": tls(domains=[f"{APP}.localhost"])}), "some of its own domains"),
        (["cert-install", APP], cert_spec(), "usage"),
        (["cert-install"], cert_spec(site="../etc"), "invalid app name"),
        (["cert-install"], cert_spec(site="front"), "invalid app name"),
        (["cert-install"], cert_spec(path="/etc/ssl/private/x.key"), "unknown keys"),
        (["cert-install"], cert_spec(chain=PAIR[0] + "Include /tmp/evil.conf\n"),
         "text after the last PEM block"),
        (["cert-install"], cert_spec(chain=PAIR[0].replace("\n-----END", "!\n-----END")),
         "text after the last PEM block"),
        (["cert-install"], cert_spec(key=PAIR[0]), "one unencrypted PEM private key"),
        (["cert-install"], cert_spec(chain=PAIR[1]), "1 to 8 PEM certificates"),
        (["cert-install"], cert_spec(chain=PAIR[0] * 9), "1 to 8 PEM certificates"),
        (["cert-install"], cert_spec(chain="x" * 70000), "at most 65536"),
        (["cert-install"], cert_spec(key=OTHER[1]), "does not match"),
        (["cert-install"], cert_spec(chain=EXPIRED[0], key=EXPIRED[1]), "has expired"),
        (["cert-install"], cert_spec(chain=NO_NAME[0], key=NO_NAME[1]), "names no DNS host"),
        (["cert-remove"], {"site": "../../etc"}, "invalid app name"),
        (["cert-install"], cert_spec(site="_fallback"), "invalid app name"),
        (["cert-remove"], {"site": "_fallback"}, "invalid app name"),
        (["cert-remove"], {"site": APP, "path": "/"}, "unknown keys"),
        (["cert-remove", APP], {"site": APP}, "usage"),
    ]


def make_pair(names: list[str], days: tuple[int, int] = (-1, 30)) -> tuple[str, str]:
    """A self-signed certificate for `names` and its key, as PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0] if names else "x")])
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now + datetime.timedelta(days=days[0]))
               .not_valid_after(now + datetime.timedelta(days=days[1])))
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
    cert = builder.sign(key, hashes.SHA256())
    return (cert.public_bytes(serialization.Encoding.PEM).decode(),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()).decode())


PAIR = make_pair([f"{APP}.localhost", f"*.{APP}.example"])
OTHER = make_pair([f"{APP}.localhost"])
EXPIRED = make_pair([f"{APP}.localhost"], days=(-30, -1))
NO_NAME = make_pair([])


def cert_spec(**changes: Any) -> dict[str, Any]:
    spec = {"site": APP, "chain": PAIR[0], "key": PAIR[1]}
    spec.update(changes)
    return spec


def tls(**changes: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"domains": [f"{APP}.localhost"], "redirect": False, "serial": "1"}
    entry.update(changes)
    return entry


def front_spec(**changes: Any) -> dict[str, Any]:
    spec = {"listen_host": "127.0.0.1", "listen_port": 8080, "scheme": "http",
            "https_port": 8443, "manager_port": 19998, "manager_tls_port": 19999,
            "dashboard": {"domain": "opus.localhost", "host": "127.0.0.1", "port": 8090,
                          "tls": None},
            "token": "0" * 32, "sites": [site()]}
    spec.update(changes)
    return spec


def site(**changes: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"app": APP, "domains": [f"{APP}.localhost"], "port": 20001,
                             "members": [20000, 20001]}
    entry.update(changes)
    return entry


def test_every_hostile_request_is_refused_and_logged(home: tuple[Layout, Path]) -> None:
    layout, config = home
    table = hostile_requests(layout)
    assert len(table) >= 40
    for argv, spec, said in table:
        before = len(log_lines(layout))
        if isinstance(spec, str):
            result = call(config, *argv, raw=spec)
        else:
            result = call(config, *argv, spec=spec)
        assert result.returncode == cli.DENIED, (argv, spec, result.stderr)
        assert said in result.stderr, (argv, said, result.stderr)
        logged = log_lines(layout)[before:]
        assert logged and logged[-1]["outcome"] == "deny", (argv, logged)
    # Nothing was written for any of them.
    assert list(layout.conf_d.iterdir()) == []
    certs = layout.front / "certs"
    assert not certs.exists() or [p.name for p in certs.iterdir()] == []


def test_same_user_mode_refuses_the_same_requests(home: tuple[Layout, Path]) -> None:
    import io
    layout, _config = home
    for argv, spec, said in hostile_requests(layout):
        if "does not exist" in said:
            continue      # same-user mode has no per-app user to miss
        text = spec if isinstance(spec, str) else json.dumps(spec)
        status = cli.handle(layout, argv, io.StringIO(text), "test", same_user=True)
        assert status == cli.DENIED, (argv, spec)
        assert log_lines(layout)[-1]["outcome"] == "deny"
        assert said in log_lines(layout)[-1]["reason"], (argv, said)
    # What it renders names no user: supervisord runs the programs as itself.
    spec = json.dumps(web_program(layout, APP))
    assert cli.handle(layout, ["programs-install", APP], io.StringIO(spec), "test",
                      same_user=True) == 0
    rendered = (layout.conf_d / f"app-{APP}.conf").read_text()
    assert "\nuser=" not in rendered
    # The front's whole config, from values; no User line (the front is the caller's).
    (layout.app_dir(APP)).mkdir(parents=True)
    assert cli.handle(layout, ["front-install"], io.StringIO(json.dumps(front_spec())),
                      "test", same_user=True) == 0, "apache2 -t refused the rendered config"
    front = (layout.front / "httpd.conf").read_text()
    assert "\nUser " not in front and f"ServerName {APP}.localhost" in front
    assert stat.S_IMODE((layout.front / "httpd.conf").stat().st_mode) == 0o600


def test_the_config_must_be_roots_alone(home: tuple[Layout, Path]) -> None:
    _layout, config = home
    config.chmod(0o666)
    result = call(config, "hand-over", APP)
    assert result.returncode == cli.DENIED and "writable by root only" in result.stderr


def test_config_can_be_chosen_only_by_root_itself(home: tuple[Layout, Path]) -> None:
    _layout, config = home
    result = call(config, "hand-over", APP, env={"PATH": "/usr/bin", "SUDO_UID": "1000"})
    assert result.returncode == cli.DENIED and "--config is for root itself" in result.stderr
    result = call(config, "hand-over", APP, env={"PATH": "/usr/bin", "DOAS_USER": "opus"})
    assert result.returncode == cli.DENIED and "--config is for root itself" in result.stderr


# ---- real users ---------------------------------------------------------------------------

@pytest.fixture()
def apps(home: tuple[Layout, Path]) -> Iterator[tuple[Layout, Path, list[str]]]:
    """Two apps with users of their own (unique names; removed afterwards)."""
    require_root("creating users needs root")
    layout, config = home
    names = [f"t{secrets.token_hex(4)}", f"t{secrets.token_hex(4)}"]
    try:
        for app in names:
            top = layout.app_dir(app)
            (top / "releases" / "v1" / "static").mkdir(parents=True)
            (top / "releases" / "v1" / "app.py").write_text("print('hi')\n")
            (top / "releases" / "v1" / "static" / "site.css").write_text("body {}\n")
            (top / "data").mkdir()
            (top / "data" / "db.sqlite3").write_text(f"secret of {app}\n")
            top.chmod(0o755)
            result = call(config, "user-create", app)
            assert result.returncode == 0, result.stderr
            assert call(config, "hand-over", app).returncode == 0
        yield layout, config, names
    finally:
        for app in names:
            subprocess.run(["userdel", f"opus-{app}"], capture_output=True, check=False)


def run_as(config: Path, layout: Layout, app: str, *argv: str,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return call(config, "run", app, spec={"argv": list(argv),
                                          "cwd": str(layout.app_dir(app) / "releases" / "v1"),
                                          "env": env or {}})


def test_users_are_made_as_opus_expects(apps: tuple[Layout, Path, list[str]]) -> None:
    layout, config, (app, _other) = apps
    entry = pwd.getpwnam(f"opus-{app}")
    assert entry.pw_dir == str(layout.app_dir(app)) and entry.pw_shell == "/usr/sbin/nologin"
    assert 300_000 <= entry.pw_uid <= 399_999      # secureops's own range
    assert call(config, "user-create", app).returncode == 0      # again: harmless
    assert run_as(config, layout, app, "/usr/bin/id", "-u").stdout.strip() == \
        str(entry.pw_uid)
    groups = run_as(config, layout, app, "/usr/bin/id", "-G").stdout.split()
    assert groups == [str(entry.pw_gid)]            # supplementary groups dropped


def test_hand_over_sets_owners_and_modes(apps: tuple[Layout, Path, list[str]]) -> None:
    layout, _config, (app, _other) = apps
    entry = pwd.getpwnam(f"opus-{app}")
    top = layout.app_dir(app)
    code = (top / "releases" / "v1" / "app.py").stat()
    data = (top / "data").stat()
    database = (top / "data" / "db.sqlite3").stat()
    assert (code.st_uid, stat.S_IMODE(code.st_mode)) == (entry.pw_uid, 0o640)
    # Opus's group reads the release; the front's (nogroup here) reads none of it.
    assert code.st_gid == grp.getgrnam(OPUS_GROUP).gr_gid
    assert (top / "releases" / "v1").stat().st_gid == grp.getgrnam(OPUS_GROUP).gr_gid
    assert (data.st_uid, stat.S_IMODE(data.st_mode)) == (entry.pw_uid, 0o700)
    assert (database.st_uid, stat.S_IMODE(database.st_mode)) == (entry.pw_uid, 0o600)
    assert stat.S_IMODE((top / "releases" / "v1").stat().st_mode) == 0o2750


def test_hand_over_gives_only_what_it_should(apps: tuple[Layout, Path, list[str]]) -> None:
    layout, config, (app, _other) = apps
    entry = pwd.getpwnam(f"opus-{app}")
    top = layout.app_dir(app)
    # A release's config: Opus keeps it (the app may read it, not grow or change it).
    (top / "env").mkdir()
    (top / "env" / "v1.json").write_text("{}")
    # A file with a second hard link (which protected_hardlinks allows to a file the
    # linker may write) is not given away.
    shared = top / "releases" / "v2"
    shared.mkdir()
    (shared / "linked").write_text("root's\n")
    os.link(shared / "linked", layout.home / "elsewhere-link")
    assert call(config, "hand-over", app).returncode == 0
    snapshot = (top / "env" / "v1.json").stat()
    assert (snapshot.st_uid, snapshot.st_gid) == (0, entry.pw_gid)
    assert stat.S_IMODE(snapshot.st_mode) == 0o640
    assert (top / "env").stat().st_uid == 0              # the directory stays Opus's
    assert (shared / "linked").stat().st_uid == 0
    assert (shared).stat().st_uid == entry.pw_uid


def test_removing_a_release_never_follows_what_the_app_planted(
        apps: tuple[Layout, Path, list[str]], tmp_path: Path) -> None:
    layout, config, (app, _other) = apps
    top = layout.app_dir(app)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep\n")
    slug = top / "releases" / "v1"
    (slug / "link").symlink_to(outside)
    os.mkfifo(slug / "fifo")
    (top / "env").mkdir(exist_ok=True)
    (top / "env" / "v1.json").write_text("{}")
    result = call(config, "release-remove", app, spec={"version": 1})
    assert result.returncode == 0, result.stderr
    assert not slug.exists() and not (top / "env" / "v1.json").exists()
    assert (outside / "keep.txt").read_text() == "keep\n"
    assert call(config, "app-remove", app).returncode == 0
    assert not top.exists() and (outside / "keep.txt").exists()


def test_a_symlink_in_the_tree_is_never_followed(apps: tuple[Layout, Path, list[str]],
                                                 tmp_path: Path) -> None:
    layout, config, (app, _other) = apps
    outside = tmp_path / "outside.txt"
    outside.write_text("root's")
    outside.chmod(0o644)
    (layout.app_dir(app) / "data" / "link").symlink_to(outside)
    (layout.app_dir(app) / "data" / "dirlink").symlink_to(tmp_path)
    assert call(config, "hand-over", app).returncode == 0
    assert outside.stat().st_uid == 0 and stat.S_IMODE(outside.stat().st_mode) == 0o644
    assert tmp_path.stat().st_uid == 0
    # A whole tree swapped for a symlink is refused.
    shutil.rmtree(layout.app_dir(app) / "data")
    (layout.app_dir(app) / "data").symlink_to(tmp_path)
    result = call(config, "hand-over", app)
    assert result.returncode == cli.DENIED and "not a plain directory" in result.stderr
    assert tmp_path.stat().st_uid == 0


def test_one_apps_user_cannot_reach_anothers(apps: tuple[Layout, Path, list[str]]) -> None:
    layout, config, (app, other) = apps
    mine = layout.app_dir(app) / "data" / "db.sqlite3"
    theirs = layout.app_dir(other) / "data" / "db.sqlite3"
    assert run_as(config, layout, app, "/usr/bin/cat", str(mine)).returncode == 0
    for argv in (["/usr/bin/cat", str(theirs)],
                 ["/usr/bin/cat", str(layout.app_dir(other) / "releases" / "v1" / "app.py")],
                 ["/usr/bin/ls", str(layout.app_dir(other) / "data")],
                 ["/usr/bin/touch", str(layout.app_dir(other) / "releases" / "v1" / "x")],
                 ["/usr/bin/touch", str(layout.home / "opus.db")],
                 ["/usr/bin/touch", str(layout.conf_d / "evil.conf")]):
        result = run_as(config, layout, app, *argv)
        assert result.returncode != 0, argv
    # Signalling the other app's process fails.
    entry = pwd.getpwnam(f"opus-{other}")
    victim = subprocess.Popen(["/usr/bin/sleep", "60"], user=entry.pw_uid, group=entry.pw_gid,
                              extra_groups=[])
    try:
        result = run_as(config, layout, app, "/usr/bin/kill", "-0", str(victim.pid))
        assert result.returncode != 0 and victim.poll() is None
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait()


def test_a_hostile_environment_reaches_neither_secureops_nor_the_step(
        apps: tuple[Layout, Path, list[str]], tmp_path: Path) -> None:
    layout, config, (app, _other) = apps
    evil = tmp_path / "evil"
    evil.mkdir()
    marker = tmp_path / "imported"
    (evil / "json.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    env = {"PATH": f"{evil}:/usr/bin:/bin", "PYTHONPATH": str(evil), "LD_PRELOAD": "",
           "LD_LIBRARY_PATH": str(evil), "PYTHONHOME": str(evil), "BASH_ENV": str(evil)}
    result = call(config, "run", app, env=env,
                  spec={"argv": ["/usr/bin/env"], "env": {"LANG": "C.UTF-8"},
                        "cwd": str(layout.app_dir(app) / "releases" / "v1")})
    assert result.returncode == 0, result.stderr
    assert not marker.exists()
    seen = dict(line.split("=", 1) for line in result.stdout.splitlines())
    assert seen == {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
                    "HOME": str(layout.app_dir(app))}


def test_programs_are_rendered_with_the_apps_user_forced(
        apps: tuple[Layout, Path, list[str]]) -> None:
    layout, config, (app, _other) = apps
    spec = web_program(layout, app)
    worker = {"name": f"{app}.worker", "numprocs": 2, "log_name": "worker.%(process_num)d.log",
              "command": [str(layout.app_dir(app) / "releases" / "v1" / "bin" / "python"),
                          "-c", "print('100%')"],
              "directory": str(layout.app_dir(app) / "releases" / "v1")}
    spec["programs"].append(worker)
    assert call(config, "programs-install", app, spec=spec).returncode == 0
    parsed = configparser.RawConfigParser()
    parsed.read(layout.conf_d / f"app-{app}.conf")
    web = parsed[f"program:{app}-web-v1-p20000"]
    assert web["user"] == f"opus-{app}"
    assert web["stdout_logfile"] == str(layout.logs / app / "web.log")
    numbered = parsed[f"program:{app}.worker"]
    assert numbered["user"] == f"opus-{app}" and numbered["numprocs"] == "2"
    assert "100%%" in numbered["command"]
    assert numbered["stdout_logfile"].endswith("/worker.%(process_num)d.log")
    assert call(config, "programs-remove", app).returncode == 0
    assert not (layout.conf_d / f"app-{app}.conf").exists()


def test_concurrent_installs_leave_one_whole_file(apps: tuple[Layout, Path, list[str]]) -> None:
    layout, config, (app, _other) = apps
    results: list[int] = []

    def install(number: int) -> None:
        spec = web_program(layout, app, name=f"{app}-web-v{number}-p20000")
        results.append(call(config, "programs-install", app, spec=spec).returncode)

    threads = [threading.Thread(target=install, args=(n,)) for n in range(1, 9)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [0] * 8
    parsed = configparser.RawConfigParser()
    parsed.read(layout.conf_d / f"app-{app}.conf")
    assert len(parsed.sections()) == 1 and parsed.sections()[0].startswith(f"program:{app}-web-v")
    assert [p.name for p in layout.conf_d.iterdir()] == [f"app-{app}.conf"]   # no leftovers


def test_user_delete_removes_only_secureops_users(apps: tuple[Layout, Path, list[str]]) -> None:
    layout, config, (app, _other) = apps
    # Not while anything of the app is left: its files would pass to the next user
    # given the same uid, and its programs would name a user that is gone.
    result = call(config, "user-delete", app)
    assert result.returncode == cli.DENIED and "directory still exists" in result.stderr
    assert call(config, "programs-install", app, spec=web_program(layout, app)).returncode == 0
    shutil.rmtree(layout.app_dir(app))
    result = call(config, "user-delete", app)
    assert result.returncode == cli.DENIED and "still has supervisor programs" in result.stderr
    assert call(config, "programs-remove", app).returncode == 0
    old_uid = pwd.getpwnam(f"opus-{app}").pw_uid
    assert call(config, "user-delete", app).returncode == 0
    with pytest.raises(KeyError):
        pwd.getpwnam(f"opus-{app}")
    assert call(config, "user-delete", app).returncode == 0      # gone already: done
    # A uid is never given out again: what the old user left must not pass on.
    layout.app_dir(app).mkdir()
    assert call(config, "user-create", app).returncode == 0
    assert pwd.getpwnam(f"opus-{app}").pw_uid > old_uid
    shutil.rmtree(layout.app_dir(app))
    assert call(config, "user-delete", app).returncode == 0
    # A user by that name that secureops did not make is left alone.
    subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                    f"opus-{app}"], check=True)
    result = call(config, "user-delete", app)
    assert result.returncode == cli.DENIED and "not made by secureops" in result.stderr
    pwd.getpwnam(f"opus-{app}")


def test_stopping_a_step_kills_everything_it_started(apps: tuple[Layout, Path, list[str]],
                                                     tmp_path: Path) -> None:
    layout, config, (app, _other) = apps
    marker = secrets.token_hex(6)
    spec = {"argv": ["/bin/sh", "-c", f"sleep 300 & exec sleep 301 # {marker}"],
            "cwd": str(layout.app_dir(app) / "releases" / "v1"), "env": {}}
    helper = subprocess.Popen([sys.executable, "-I", "-m", "secureops", "--config",
                               str(config), "run", app], stdin=subprocess.PIPE,
                              env={"PATH": "/usr/bin:/bin"})
    assert helper.stdin is not None
    helper.stdin.write(json.dumps(spec).encode())
    helper.stdin.close()
    uid = pwd.getpwnam(f"opus-{app}").pw_uid

    def sleepers() -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if entry.stat().st_uid == uid and \
                            (entry / "cmdline").read_bytes().startswith(b"sleep"):
                        found.append(int(entry.name))
                except OSError:
                    continue
        return found

    deadline = time.monotonic() + 10
    while len(sleepers()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(sleepers()) == 2
    helper.send_signal(signal.SIGTERM)
    assert helper.wait(timeout=10) != 0
    deadline = time.monotonic() + 5
    while sleepers() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sleepers() == []


def test_a_step_starts_where_it_was_asked_never_through_a_link(
        apps: tuple[Layout, Path, list[str]]) -> None:
    layout, config, (app, other) = apps
    secret = layout.app_dir(other) / "data" / "uploads"
    secret.mkdir()
    (secret / "f.txt").write_text("other's upload")
    secret.chmod(0o755)              # open itself, inside the other app's closed data/
    (layout.app_dir(app) / "data" / "x").symlink_to(secret)
    result = call(config, "run", app, spec={"argv": ["/usr/bin/cat", "f.txt"], "env": {},
                                            "cwd": str(layout.app_dir(app) / "data" / "x")})
    assert result.returncode == cli.DENIED and "not a plain directory" in result.stderr
    assert "other's upload" not in result.stdout


def test_supervisors_files_must_be_roots_alone(apps: tuple[Layout, Path, list[str]]) -> None:
    layout, config, (app, _other) = apps
    spec = web_program(layout, app)
    os.chown(layout.conf_d, 65534, 65534)      # conf.d given to someone else
    result = call(config, "programs-install", app, spec=spec)
    assert result.returncode == cli.DENIED and "writable by root alone" in result.stderr
    os.chown(layout.conf_d, 0, 0)
    # A log directory planted as a link to somewhere root would write is refused.
    target = layout.home / "elsewhere"
    target.mkdir()
    (layout.logs / app).symlink_to(target)
    result = call(config, "programs-install", app, spec=spec)
    assert result.returncode == cli.DENIED and "not a plain directory" in result.stderr
    (layout.logs / app).unlink()
    assert call(config, "programs-install", app, spec=spec).returncode == 0
    info = (layout.logs / app).stat()
    assert info.st_uid == 0 and stat.S_IMODE(info.st_mode) == 0o750
    assert info.st_gid == grp.getgrnam(OPUS_GROUP).gr_gid     # Opus reads, no app does
    # supervisord's own parser reads what was rendered.
    from supervisor.options import UnhosedConfigParser
    parser = UnhosedConfigParser()
    parser.read_string((layout.conf_d / f"app-{app}.conf").read_text())
    assert parser.saneget(f"program:{app}-web-v1-p20000", "user") == f"opus-{app}"


def test_a_tree_too_deep_is_refused(apps: tuple[Layout, Path, list[str]]) -> None:
    layout, config, (app, _other) = apps
    deep = layout.app_dir(app) / "data"
    for _ in range(300):
        deep = deep / "d"
    deep.mkdir(parents=True)
    result = call(config, "hand-over", app)
    assert result.returncode == cli.DENIED and "deeper than 256" in result.stderr


# The app's user builds this in its data/: 600 directories of 20-letter names (paths far
# past PATH_MAX), at the bottom links to root's files and a FIFO, none to be followed.
DEEP_TREE = """
import os
os.chdir("../../data")
for _ in range(600):
    os.mkdir("d" * 20)
    os.chdir("d" * 20)
    open("f", "w").write("x")
os.symlink("/etc", "etc")
os.symlink("/etc/hostname", "hostname")
os.mkfifo("fifo")
"""


def test_a_tree_of_any_depth_is_removed_without_following_links(
        apps: tuple[Layout, Path, list[str]], tmp_path: Path) -> None:
    layout, config, (app, other) = apps
    built = run_as(config, layout, app, "/usr/bin/python3", "-I", "-c", DEEP_TREE)
    assert built.returncode == 0, built.stderr
    hostname = Path("/etc/hostname").read_bytes()
    result = call(config, "app-remove", app)
    assert result.returncode == 0, result.stderr
    assert not layout.app_dir(app).exists()
    assert Path("/etc/hostname").read_bytes() == hostname
    assert (layout.app_dir(other) / "data" / "db.sqlite3").is_file()


def test_an_unwritable_log_stops_the_request(home: tuple[Layout, Path]) -> None:
    layout, config = home
    os.mkfifo(layout.log)            # a FIFO cannot hang the helper
    result = call(config, "programs-install", APP, spec=web_program(layout, APP))
    assert result.returncode == cli.DENIED and "cannot open the log" in result.stderr
    layout.log.unlink()
    layout.log.write_text("")
    os.chown(layout.log, 65534, 65534)      # someone else's: they could forge lines
    result = call(config, "programs-install", APP, spec=web_program(layout, APP))
    assert result.returncode == cli.DENIED and "not a regular file of" in result.stderr
    assert layout.log.read_text() == ""
    assert not (layout.conf_d / f"app-{APP}.conf").exists()


def test_an_app_name_too_long_for_a_unix_user_is_refused(home: tuple[Layout, Path]) -> None:
    _layout, config = home
    result = call(config, "user-create", "a" * 28)
    assert result.returncode == cli.DENIED and "longer than a Unix user name" in result.stderr


# ---- interpreters and wheels: copied in whole, plain, or not at all ----------------------

@pytest.fixture()
def tools_home(home: tuple[Layout, Path]) -> tuple[Layout, Path]:
    """`home` whose config puts the interpreters and wheels under its own base (root's)."""
    layout, config = home
    require_root("secureops installs root-owned copies as root")
    lib = layout.home.parent / "lib"
    lib.mkdir(mode=0o755)
    data = json.loads(config.read_text())
    data.update(pythons=str(lib / "pythons"), wheels=str(lib / "wheels"))
    config.write_text(json.dumps(data))
    return Layout(**{**layout.__dict__, "pythons": lib / "pythons", "wheels": lib / "wheels"}), \
        config


def stage_python(layout: Layout, name: str = PYTHON) -> Path:
    """A small interpreter-shaped tree in Opus's staging, as uv would leave one (plus a
    set-user-ID bit and a world-writable file a careless or hostile stager left)."""
    top = layout.staging / "pythons" / name
    (top / "bin").mkdir(parents=True)
    (top / "lib" / "python3.13").mkdir(parents=True)
    (top / "bin" / "python3.13").write_text("#!/bin/sh\necho python\n")
    (top / "bin" / "python3.13").chmod(0o4755)
    (top / "bin" / "python3").symlink_to("python3.13")
    (top / "lib" / "python3.13" / "os.py").write_text("# os\n")
    (top / "lib" / "python3.13" / "os.py").chmod(0o666)
    (top / "lib" / "libpython3.13.so").write_bytes(b"\x7fELF" + b"\0" * 4096)
    (top / "lib" / "libpython3.13.so").chmod(0o600)
    return top


def test_an_interpreter_is_copied_root_owned_and_plain(
        tools_home: tuple[Layout, Path]) -> None:
    layout, config = tools_home
    stage_python(layout)
    result = call(config, "python-install", spec={"name": PYTHON})
    assert result.returncode == 0, result.stderr
    installed = layout.pythons / PYTHON
    modes = {str(p.relative_to(installed)): stat.S_IMODE(p.lstat().st_mode)
             for p in installed.rglob("*") if not p.is_symlink()}
    assert modes == {"bin": 0o755, "bin/python3.13": 0o755, "lib": 0o755,
                     "lib/python3.13": 0o755, "lib/python3.13/os.py": 0o644,
                     "lib/libpython3.13.so": 0o644}
    assert os.readlink(installed / "bin" / "python3") == "python3.13"
    staged_source = layout.staging / "pythons" / PYTHON / "lib" / "python3.13" / "os.py"
    assert (installed / "lib" / "python3.13" / "os.py").stat().st_mtime_ns == \
        staged_source.stat().st_mtime_ns      # bytecode is checked against it
    assert all(p.lstat().st_uid == 0 for p in [layout.pythons, installed, *installed.rglob("*")])
    assert stat.S_IMODE(layout.pythons.stat().st_mode) == 0o755
    # What the stager changes afterwards does not reach the installed copy.
    (layout.staging / "pythons" / PYTHON / "lib" / "python3.13" / "os.py").write_text("evil")
    assert (installed / "lib" / "python3.13" / "os.py").read_text() == "# os\n"
    again = call(config, "python-install", spec={"name": PYTHON})
    assert again.returncode == cli.DENIED and "installed already" in again.stderr
    assert call(config, "python-remove", spec={"name": PYTHON}).returncode == 0
    assert not installed.exists()
    assert call(config, "python-remove", spec={"name": PYTHON}).returncode == 0   # gone: done


def hostile_trees(top: Path) -> list[tuple[str, Callable[[], None]]]:
    def link_out() -> None:
        (top / "lib" / "escape").symlink_to("../../../../../../etc")

    def link_through_a_link() -> None:
        (top / "bin" / "up").symlink_to("..")
        (top / "bin" / "out").symlink_to("up/../..")

    def absolute_link() -> None:
        (top / "bin" / "python3").unlink()
        (top / "bin" / "python3").symlink_to("/tmp/planted-python")

    def fifo() -> None:
        os.mkfifo(top / "lib" / "pipe")

    def someone_elses_file() -> None:
        os.chown(top / "lib" / "python3.13" / "os.py", pwd.getpwnam("nobody").pw_uid, -1)

    def not_an_interpreter() -> None:
        (top / "bin" / "python3").unlink()

    def staged_as_a_link() -> None:
        real = top.parent / "elsewhere"
        top.rename(real)
        top.symlink_to(real)

    return [("leads out of the tree", link_out), ("leads out of the tree", link_through_a_link),
            ("leads out of the tree", absolute_link),
            ("a device, FIFO or socket", fifo),
            ("not the Opus home owner's", someone_elses_file),
            ("has no bin/python3", not_an_interpreter),
            ("not a plain directory", staged_as_a_link)]


def test_a_hostile_staged_interpreter_is_refused_whole(tools_home: tuple[Layout, Path]) -> None:
    layout, config = tools_home
    for said, spoil in hostile_trees(layout.staging / "pythons" / PYTHON):
        top = stage_python(layout)
        spoil()
        result = call(config, "python-install", spec={"name": PYTHON})
        assert result.returncode == cli.DENIED and said in result.stderr, (said, result.stderr)
        assert not layout.pythons.exists() or list(layout.pythons.iterdir()) == [], said
        shutil.rmtree(top.parent)
        assert log_lines(layout)[-1]["outcome"] == "deny"


def test_wheels_are_copied_one_whole_file_each(tools_home: tuple[Layout, Path]) -> None:
    layout, config = tools_home
    key = "cp313-0123456789abcdef"
    wheel = "mod_wsgi-6.1.1-cp313-cp313-linux_x86_64.whl"
    staged = layout.staging / "wheels" / key
    staged.mkdir(parents=True)
    (staged / wheel).write_bytes(b"PK" + b"\0" * 100)
    (staged / wheel).chmod(0o4777)
    assert call(config, "wheels-install", spec={"key": key}).returncode == 0
    installed = layout.wheels / key / wheel
    assert installed.read_bytes() == b"PK" + b"\0" * 100
    assert stat.S_IMODE(installed.stat().st_mode) == 0o644 and installed.stat().st_uid == 0
    assert stat.S_IMODE((layout.wheels / key).stat().st_mode) == 0o755
    makers: list[tuple[str, Callable[[Path], object]]] = [
        ("install.sh", lambda p: p.write_text("id")), ("sub.whl", lambda p: p.mkdir()),
        (f"{wheel[:-4]}-link.whl", lambda p: p.symlink_to("/etc/shadow"))]
    for name, make in makers:
        make(staged / name)
        result = call(config, "wheels-install", spec={"key": key})
        assert result.returncode == cli.DENIED and "not a wheel file" in result.stderr, name
        assert sorted(p.name for p in (layout.wheels / key).iterdir()) == [wheel]
        target = staged / name
        shutil.rmtree(target) if target.is_dir() and not target.is_symlink() else target.unlink()
    assert call(config, "wheels-remove", spec={"key": key}).returncode == 0
    assert not (layout.wheels / key).exists()


def test_same_user_mode_copies_for_the_caller(tools_home: tuple[Layout, Path]) -> None:
    import io
    layout, _config = tools_home
    stage_python(layout)
    assert cli.handle(layout, ["python-install"], io.StringIO(json.dumps({"name": PYTHON})),
                      "test", same_user=True) == 0
    installed = layout.pythons / PYTHON / "bin" / "python3.13"
    assert stat.S_IMODE(installed.stat().st_mode) == 0o755


def test_certificates_are_roots_alone_and_only_covered_names_get_https(
        home: tuple[Layout, Path]) -> None:
    """As root (system mode): the pair is rewritten, 0600 in a 0700 directory of root's,
    unreadable by the front's children and the apps; the front serves https only for
    the names the certificate covers, and a name without one gets the self-signed
    fallback (apache2 -t passes on all of it)."""
    layout, config = home
    (layout.app_dir(APP)).mkdir(parents=True)
    assert call(config, "cert-install", spec=cert_spec()).returncode == 0
    directory = layout.front / "certs" / APP
    for name in ("chain.pem", "key.pem", "names.json"):
        info = (directory / name).stat()
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (0, 0o600), name
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert json.loads((directory / "names.json").read_text()) == \
        [f"{APP}.localhost", f"*.{APP}.example"]
    read = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                           "cat", str(directory / "key.pem")], capture_output=True, text=True,
                          check=False)
    assert read.returncode != 0 and "Permission denied" in read.stderr
    asked = site(domains=[f"{APP}.localhost", f"www.{APP}.example", "other.example.org"],
                 tls=tls(domains=[f"{APP}.localhost", f"www.{APP}.example",
                                  "other.example.org"], redirect=True))
    done = call(config, "front-install", spec=front_spec(sites=[asked]))
    assert done.returncode == 0, done.stderr
    front = (layout.front / "httpd.conf").read_text()
    assert "Listen 127.0.0.1:8443 https" in front and "SSLProtocol -all +TLSv1.2 +TLSv1.3" in front
    assert "Protocols h2 http/1.1" in front
    https_vhost = front.split("<VirtualHost 127.0.0.1:8443 127.0.0.1:19999>")[-1]
    assert f"ServerName {APP}.localhost" in https_vhost
    assert f"ServerAlias www.{APP}.example" in https_vhost     # the wildcard covers it
    assert "other.example.org" not in https_vhost               # not on the certificate
    assert 'Strict-Transport-Security "max-age=31536000"' in https_vhost
    assert (layout.front / "certs" / "_fallback" / "key.pem").stat().st_mode & 0o777 == 0o600
    # A planted link in place of the site's directory is refused, never followed.
    subprocess.run(["rm", "-r", str(directory)], check=True)
    directory.symlink_to("/etc")
    refused = call(config, "cert-install", spec=cert_spec())
    assert refused.returncode == cli.FAILED or refused.returncode == cli.DENIED
    assert not Path("/etc/key.pem").exists()
    directory.unlink()
    # Removing it: the next render has no https for the app.
    assert call(config, "cert-install", spec=cert_spec()).returncode == 0
    assert call(config, "cert-remove", spec={"site": APP}).returncode == 0
    assert not directory.exists()
    assert call(config, "front-install", spec=front_spec(sites=[asked])).returncode == 0
    assert ":8443" not in (layout.front / "httpd.conf").read_text()


def test_port_rules_keep_each_port_to_its_owner() -> None:
    """The nftables table (pure): per guarded set of ports, a reset for a connection from
    anyone but its clients, a drop for what anyone but its owner sends from it; the
    whole table replaced in one transaction. nft itself accepts it (in a network
    namespace of its own: the host's rules are untouched)."""
    guards = [firewall.Guard("the balancer-manager", (20000, 20001), frozenset({0, 998}),
                             frozenset({0, 997})),
              firewall.Guard("app shop", (20002, 20003),
                             frozenset({0, 998, 997, 300001}), frozenset({300001}))]
    text = firewall.render(guards)
    assert text.index("add table inet opus") < text.index("delete table inet opus") < \
        text.index("table inet opus {")
    assert ("tcp dport { 20002, 20003 } meta skuid != { 0, 997, 998, 300001 } "
            "reject with tcp reset") in text
    assert "tcp sport { 20002, 20003 } meta skuid != 300001 drop" in text
    assert "tcp sport { 20000, 20001 } meta skuid != { 0, 997 } drop" in text
    for hostile in (firewall.Guard("x\n}", (1,), frozenset({0}), frozenset({0})),
                    firewall.Guard("x", (), frozenset({0}), frozenset({0})),
                    firewall.Guard("x", (1,), frozenset({-1}), frozenset({0})),
                    firewall.Guard("x", (1,), frozenset({0}), frozenset())):
        with pytest.raises(Denied):
            firewall.render([hostile])
    nft = shutil.which("nft") or "/usr/sbin/nft"
    require_tool(nft)
    require_root("nft loads rules in a network namespace of its own")
    loaded = subprocess.run(["unshare", "--net", "sh", "-c",
                             f"{nft} -f - && {nft} list table inet opus"], input=text,
                            capture_output=True, text=True, check=False)
    assert loaded.returncode == 0, loaded.stderr
    assert "meta skuid != 300001 drop" in loaded.stdout


# ---- the front's copy of static files -------------------------------------------------------

def static_release(layout: Layout, version: int, css: str) -> Path:
    """releases/vN of APP with a collected static file and a source file."""
    slug = layout.app_dir(APP) / "releases" / f"v{version}"
    (slug / ".opus" / "static" / "pages").mkdir(parents=True)
    (slug / ".opus" / "static" / "pages" / "site.css").write_text(css)
    (slug / "manage.py").write_text("source\n")
    return slug / ".opus" / "static"


def in_process(layout: Layout, *argv: str, spec: Any = None) -> tuple[int, str]:
    import io
    return cli.request(layout, list(argv), io.StringIO(json.dumps(spec)), "test",
                       same_user=True)


def test_static_files_are_copied_for_the_front_never_through_a_link(
        home: tuple[Layout, Path], tmp_path: Path) -> None:
    layout = dataclasses.replace(home[0], front_group=grp.getgrgid(os.getegid()).gr_name)
    secret = tmp_path / "secret.txt"
    secret.write_text("another app's\n")
    static = static_release(layout, 1, "v1\n")
    (static / "leak.txt").symlink_to(secret)
    (static / "elsewhere").symlink_to(tmp_path)
    os.mkfifo(static / "pipe")
    status, said = in_process(layout, "static-install", APP, spec={"version": 1, "live": False})
    assert status == 0, said
    copy = layout.static / APP / "v1"
    assert (copy / "pages" / "site.css").read_text() == "v1\n"
    assert sorted(p.name for p in copy.iterdir()) == ["pages"]      # no link, no FIFO
    for name in ("'leak.txt': a symlink", "'elsewhere': a symlink", "'pipe': a FIFO"):
        assert f"skipped static/{name}" in said, said
    assert said.startswith("copied 2 entries")
    assert stat.S_IMODE(copy.stat().st_mode) == 0o750
    assert stat.S_IMODE((copy / "pages" / "site.css").stat().st_mode) == 0o640
    assert not (layout.static / APP / "current").exists()        # not live yet
    assert in_process(layout, "static-install", APP, spec={"version": 1, "live": True})[0] == 0
    served = layout.static / APP / "current"
    assert os.readlink(served) == "v1"
    # What the app changes in its release afterwards never reaches the copy.
    (static / "pages" / "site.css").write_text("changed\n")
    shutil.rmtree(static / "pages")
    (static / "pages").symlink_to(tmp_path)
    assert in_process(layout, "static-install", APP, spec={"version": 1, "live": True})[0] == 0
    assert (served / "pages" / "site.css").read_text() == "v1\n"
    # A new release goes live, then back (a rollback): each serves its own copy.
    static_release(layout, 2, "v2\n")
    assert in_process(layout, "static-install", APP, spec={"version": 2, "live": True})[0] == 0
    assert (served / "pages" / "site.css").read_text() == "v2\n"
    assert in_process(layout, "static-install", APP, spec={"version": 1, "live": True})[0] == 0
    assert (served / "pages" / "site.css").read_text() == "v1\n"
    # A release without static files gets an empty copy; a missing one is refused; a
    # static directory swapped for a link is refused, and nothing is copied.
    (layout.app_dir(APP) / "releases" / "v3").mkdir()
    assert in_process(layout, "static-install", APP, spec={"version": 3, "live": False})[0] == 0
    assert list((layout.static / APP / "v3").iterdir()) == []
    status, said = in_process(layout, "static-install", APP, spec={"version": 9, "live": True})
    assert status == cli.DENIED and "release v9 has no build" in said
    linked = layout.app_dir(APP) / "releases" / "v4" / ".opus"
    linked.mkdir(parents=True)
    (linked / "static").symlink_to(tmp_path)
    status, said = in_process(layout, "static-install", APP, spec={"version": 4, "live": True})
    assert status == cli.DENIED and "not a plain directory" in said
    assert sorted(p.name for p in (layout.static / APP).iterdir()) == \
        ["current", "v1", "v2", "v3"]
    # Pruned with its release; all of it with the app.
    assert in_process(layout, "release-remove", APP, spec={"version": 2})[0] == 0
    assert not (layout.static / APP / "v2").exists()
    assert in_process(layout, "app-remove", APP)[0] == 0
    assert not (layout.static / APP).exists() and secret.exists()


def test_too_many_static_files_are_refused_with_what_to_do(
        home: tuple[Layout, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from secureops import static as static_module
    layout = dataclasses.replace(home[0], front_group=grp.getgrgid(os.getegid()).gr_name)
    static = static_release(layout, 1, "v1\n")
    for number in range(5):
        (static / f"f{number}.js").write_text("x")
    monkeypatch.setattr(static_module, "MAX_ENTRIES", 4)
    status, said = in_process(layout, "static-install", APP, spec={"version": 1, "live": True})
    assert status == cli.DENIED and "more than 4 entries" in said and "collect fewer" in said
    assert list((layout.static / APP).iterdir()) == []       # nothing half-copied


def test_hand_over_never_chowns_a_name_the_app_can_already_swap(
        apps: tuple[Layout, Path, list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    """The app's user races the hand-over: the moment it could change a directory, it
    swaps the symlink about to be chowned by name for a hard link to a file it may write
    but does not own. Handed over, directories come last, and a symlink in a directory
    the app already owns is left alone: the file stays root's."""
    import io
    layout, _config, (app, _other) = apps
    entry = pwd.getpwnam(f"opus-{app}")
    victim = layout.home / "victim"
    victim.write_text("root's\n")
    victim.chmod(0o666)
    fresh = layout.app_dir(app) / "releases" / "v2" / "assets"
    fresh.mkdir(parents=True)
    for number in range(3):
        (fresh / f"link{number}").symlink_to("target")
    planted = layout.app_dir(app) / "data" / "planted"      # data/ is the app's already
    planted.symlink_to("target")
    os.lchown(planted, 0, 0)
    real_chown = os.chown
    swapped = []

    def racing_chown(path: Any, uid: int, gid: int, *, dir_fd: int | None = None,
                     follow_symlinks: bool = True) -> None:
        if dir_fd is not None and os.fstat(dir_fd).st_uid == entry.pw_uid:
            os.unlink(path, dir_fd=dir_fd)          # what the app's user could do now
            os.link(victim, path, dst_dir_fd=dir_fd)
            swapped.append(path)
        real_chown(path, uid, gid, dir_fd=dir_fd, follow_symlinks=follow_symlinks)

    monkeypatch.setattr(os, "chown", racing_chown)
    status, said = cli.request(layout, ["hand-over", app], io.StringIO(""), "test",
                               same_user=False)
    assert status == 0, said
    assert swapped == [] and victim.stat().st_uid == 0
    for number in range(3):
        assert (fresh / f"link{number}").lstat().st_uid == entry.pw_uid
    assert fresh.stat().st_uid == entry.pw_uid
    assert planted.lstat().st_uid == 0          # in the app's own directory: left alone


def test_hand_over_takes_the_front_off_an_earlier_release(
        apps: tuple[Layout, Path, list[str]]) -> None:
    """A release an earlier Opus gave the front's group (to serve static files from it)
    becomes Opus's group's: the front reads no app's sources."""
    layout, config, (app, _other) = apps
    slug = layout.app_dir(app) / "releases" / "v1"
    os.chown(slug, -1, grp.getgrnam(FRONT_GROUP).gr_gid)
    assert call(config, "hand-over", app).returncode == 0
    assert slug.stat().st_gid == grp.getgrnam(OPUS_GROUP).gr_gid
    assert slug.stat().st_uid == pwd.getpwnam(f"opus-{app}").pw_uid
    front = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                            "cat", str(slug / "app.py")], capture_output=True, text=True,
                           check=False)
    assert front.returncode != 0 and "Permission denied" in front.stderr


def test_run_input_gives_the_step_what_follows_the_spec_line(
        apps: tuple[Layout, Path, list[str]]) -> None:
    """`run-input` (pg:psql -c's SQL, kept out of argv): the step reads secureops's
    standard input after the spec's line; `run` gives its step nothing."""
    layout, config, (app, _other) = apps
    spec = json.dumps({"argv": ["/usr/bin/cat"], "env": {},
                       "cwd": str(layout.app_dir(app) / "releases" / "v1")})
    given = call(config, "run-input", app, raw=spec + "\nSELECT 'from stdin';\n")
    assert given.returncode == 0 and given.stdout == "SELECT 'from stdin';\n", given.stderr
    plain = call(config, "run", app, raw=spec)
    assert plain.returncode == 0 and plain.stdout == "", plain.stderr
    two_lines = call(config, "run-input", app, raw=spec.replace(", ", ",\n") + "\nx\n")
    assert two_lines.returncode == cli.DENIED
