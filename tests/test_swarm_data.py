"""Data for Swarm nodes (docs/scale-out.md, "Data"): Opus's private CA, the session's
Postgres reached over TLS from a real client in a node's network namespace (allowed
address, own database: yes; plain TCP, a stranger's address, another app's database:
no), a swarm task verifying it with the CA its deploy mounts, hostile node addresses and
certificate names, and which apps stay on one node."""

from __future__ import annotations

import contextlib
import datetime
import io
import ipaddress
import os
import secrets
import socket
import stat
import subprocess
import tarfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from opus_paas import locks
from opus_paas import settings as settings_module
from opus_paas.data import nodes, server
from opus_paas.errors import InvalidName, UsageError
from opus_paas.store import Store
from opus_paas.swarm import deploy, pinning, prune, services
from opus_paas.swarm import nodes as swarm_mgr
from opus_paas.tls import private_ca
from tests import swarm_nodes
from tests.conftest import Opus, SshKey, require_root, require_tool

PSQL = "/usr/lib/postgresql/15/bin/psql"

HOSTILE_ADDRESSES = [
    "", "all", "samehost", "samenet", "0.0.0.0", "::", "127.0.0.1", "::1", "fe80::1",
    "224.0.0.1", "255.255.255.255", "10.0.0.1/0", "10.0.0.0/8", " 10.0.0.1", "10.0.0.1 ",
    "10.0.0.1\nhost all all 0.0.0.0/0 trust", "10.0.0.1 all", "node1.example",
    "010.0.0.1", "10.0.0.256", "\uff110.0.0.1", "10.0.0.1%eth0",
    "fd00::1%eth0", "fd00::1%0", "[fd00::1]", "::ffff:0.0.0.0",
]


def _settings_in(home: Path) -> settings_module.Settings:
    return settings_module.load({"OPUS_HOME": str(home)})


# ---- the private CA ---------------------------------------------------------------------

def test_private_ca_issues_server_certificates_that_verify(tmp_path: Path) -> None:
    settings = _settings_in(tmp_path / "home")
    issued = private_ca.issue(settings, "postgres", ["10.77.3.1", "fd00::1", "opus.internal"])
    ca = x509.load_pem_x509_certificate(private_ca.ca_cert_path(settings).read_bytes())
    leaf = x509.load_pem_x509_certificate(issued.cert.encode())
    leaf.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert sorted(private_ca.hosts_of(issued.cert)) == ["10.77.3.1", "fd00::1",
                                                        "opus.internal"]
    alt = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert alt.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.77.3.1"),
                                                       ipaddress.ip_address("fd00::1")]
    assert leaf.not_valid_after_utc - datetime.datetime.now(datetime.UTC) < \
        datetime.timedelta(days=private_ca.SERVER_DAYS + 1)
    # Made once: a second issue signs with the same CA.
    before = private_ca.ca_cert_path(settings).read_bytes()
    again = private_ca.issue(settings, "registry", ["10.77.3.1"])
    assert private_ca.ca_cert_path(settings).read_bytes() == before
    x509.load_pem_x509_certificate(again.cert.encode()).verify_directly_issued_by(ca)
    assert stat.S_IMODE(private_ca.ca_key_path(settings).stat().st_mode) == 0o600
    assert stat.S_IMODE(private_ca.ca_cert_path(settings).stat().st_mode) == 0o644
    cert_path, key_path = tmp_path / "server.crt", tmp_path / "server.key"
    key_path.symlink_to(tmp_path / "elsewhere")
    private_ca.install(issued, cert_path, key_path)
    assert not key_path.is_symlink() and not (tmp_path / "elsewhere").exists()
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert key_path.read_text() == issued.key and cert_path.read_text() == issued.cert
    # Another CA's certificate does not verify against this one.
    other = _settings_in(tmp_path / "other")
    stranger = x509.load_pem_x509_certificate(
        private_ca.issue(other, "postgres", ["10.77.3.1"]).cert.encode())
    with pytest.raises((ValueError, InvalidSignature)):
        stranger.verify_directly_issued_by(ca)


@pytest.mark.parametrize("name", ["", "Postgres", "../ca", "a/b", "-x", "x" * 64, "ca\n",
                                  "a b", "é"])
def test_private_ca_refuses_hostile_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidName):
        private_ca.issue(_settings_in(tmp_path), name, ["10.0.0.1"])
    assert not private_ca.ca_dir(_settings_in(tmp_path)).exists()


@pytest.mark.parametrize("host", ["", "*.example.com", "0.0.0.0", "::", "224.0.0.1",
                                  "Example.com", "a..b", "-a.b", "a_b.c", "x\ny", "a b",
                                  "10.0.0.1/8", "1.2.3.999", "é.example", "a" * 254,
                                  "fd00::1%eth0", "[fd00::1]"])
def test_private_ca_refuses_hostile_hosts(tmp_path: Path, host: str) -> None:
    with pytest.raises(InvalidName):
        private_ca.issue(_settings_in(tmp_path), "registry", [host])
    with pytest.raises(InvalidName):
        private_ca.issue(_settings_in(tmp_path), "registry", [])


# ---- pg_hba for nodes (pure) ------------------------------------------------------------

@pytest.mark.parametrize("address", HOSTILE_ADDRESSES)
def test_node_addresses_are_ip_literals_only(address: str) -> None:
    with pytest.raises(InvalidName):
        nodes.check_addresses([address])


def test_pg_hba_gives_each_node_each_app_database_over_tls_only() -> None:
    assert nodes.check_addresses(["10.0.0.12", "fd00::2", "10.0.0.2", "10.0.0.12"]) == \
        ["10.0.0.2", "10.0.0.12", "fd00::2"]
    text = nodes.render_hba(["app_a", "app_b"], ["10.0.0.2", "fd00::2"])
    rules = [line.split() for line in text.splitlines() if line and not line.startswith("#")]
    assert rules == [
        ["local", "all", "opus_admin", "scram-sha-256"],
        ["local", "sameuser", "all", "scram-sha-256"],
        ["hostssl", "app_a", "app_a", "10.0.0.2/32", "scram-sha-256"],
        ["hostssl", "app_b", "app_b", "10.0.0.2/32", "scram-sha-256"],
        ["host", "all", "all", "10.0.0.2/32", "reject"],
        ["hostssl", "app_a", "app_a", "fd00::2/128", "scram-sha-256"],
        ["hostssl", "app_b", "app_b", "fd00::2/128", "scram-sha-256"],
        ["host", "all", "all", "fd00::2/128", "reject"],
    ]
    assert "host" not in nodes.render_hba(["app_a"], []).replace("#", "")
    with pytest.raises(InvalidName):
        nodes.render_hba(["all"], ["10.0.0.2"])


def test_the_cluster_listens_for_nodes_with_tls_only_when_there_are_nodes(
        tmp_path: Path) -> None:
    settings = _settings_in(tmp_path)

    def options(listen: list[str] | None) -> dict[str, str]:
        args = server.server_options(settings, listen)
        return dict(arg.split("=", 1) for arg in args[1::2])
    alone = options(None)
    assert alone["listen_addresses"] == "" and "ssl" not in alone
    with_nodes = options(["10.77.3.1", "fd00::1"])
    cert, key = server.tls_files(settings)
    assert with_nodes["listen_addresses"] == "10.77.3.1,fd00::1"
    assert (with_nodes["ssl"], with_nodes["ssl_cert_file"], with_nodes["ssl_key_file"]) == \
        ("on", str(cert), str(key))
    assert server.is_local("127.0.0.1") and not server.is_local("192.0.2.77")


def test_nodes_without_opus_postgres_change_nothing(tmp_path: Path) -> None:
    settings = _settings_in(tmp_path)
    store = Store(tmp_path / "opus.db")
    store.init()
    assert nodes.follow(settings, store, ["10.0.0.12"]) is None
    store.set_addon(server.ADDON, {"kind": "external", "url": "postgres://a:b@db/postgres"})
    assert nodes.follow(settings, store, ["10.0.0.12"]) is None
    with pytest.raises(InvalidName):
        nodes.follow(settings, store, ["10.0.0.0/8"])
    with pytest.raises(UsageError):
        nodes.allow_nodes(settings, store, ["10.0.0.12"])
    assert not server.home(settings).exists()


# ---- pinning (pure) ---------------------------------------------------------------------

def test_apps_on_sqlite_or_data_stay_on_one_node() -> None:
    facts = pinning.ReleaseFacts(procfile={"web": "gunicorn x.wsgi"})
    pin = pinning.reason({}, facts)
    assert pin == pinning.Pin("sqlite", "SQLite (db.sqlite3 in data/)")
    assert pinning.message("shop", pin, "node2") == (
        "shop uses SQLite (db.sqlite3 in data/): it stays on node node2; attach Postgres "
        "with `opus pg:create shop` to spread it")
    assert pinning.reason({"DATABASE_URL": "sqlite:////srv/db.sqlite3"}, facts) == \
        pinning.Pin("sqlite", "SQLite (DATABASE_URL is a sqlite:// file)")
    postgres = {"DATABASE_URL": "postgres://u:p@10.0.0.1:5432/d"}
    assert pinning.reason(postgres, facts) is None
    assert pinning.reason(postgres, pinning.ReleaseFacts(
        data_entries=("db.sqlite3", ".keep"))) is None
    media = pinning.reason(postgres, pinning.ReleaseFacts(
        data_entries=("media", "db.sqlite3", "exports", "a", "b")))
    assert media == pinning.Pin("data", "files in data/ (a, b, exports, …)")
    assert "stays on node node1" in pinning.message("shop", media, "node1")
    worker = pinning.reason(postgres, pinning.ReleaseFacts(
        procfile={"web": "gunicorn x", "worker": "python w.py --dir $OPUS_DATA_DIR"}))
    assert worker == pinning.Pin("process", "its worker process's data directory "
                                 "($OPUS_DATA_DIR)")
    # Not Django (no overlay), or the overlay's DATABASES turned off: no SQLite default.
    assert pinning.reason({}, pinning.ReleaseFacts(overlay=False)) is None
    assert pinning.reason({"OPUS_DISABLE_OVERRIDES": "ALLOWED_HOSTS, databases"},
                          facts) is None
    django = pinning.ReleaseFacts.of({"framework": "django"}, {"web": "x"}, ["media"])
    assert django.overlay and django.data_entries == ("media",)
    assert not pinning.ReleaseFacts.of({}, {}, []).overlay
    assert pinning.reason({}, pinning.ReleaseFacts.of({"framework": "flask"}, {}, [])) is None
    assert pinning.placement("node-2.dc1") == "node.labels.opus.node==node-2.dc1"
    for hostile in ["", "Node", "a==b", "x\ny", "a b", "-a", "a" * 64]:
        with pytest.raises(InvalidName):
            pinning.placement(hostile)
        with pytest.raises(InvalidName):
            pinning.message("shop", pin, hostile)


# ---- Postgres from a node's network namespace -------------------------------------------

class Net:
    """A bridge with the host's address and two namespaces: an allowed node and a
    stranger, each a veth on the bridge."""

    def __init__(self) -> None:
        run = secrets.token_hex(3)
        net = swarm_nodes._free_subnet()
        hosts = list(net.hosts())
        self.bridge, self.gateway = f"osd{run}", str(hosts[0])
        owner = f"opus-data-{os.getpid()}-{run}"
        self.spaces = {"node": (f"{owner}-node", f"osd{run}a", str(hosts[10])),
                       "stranger": (f"{owner}-x", f"osd{run}b", str(hosts[11]))}

    @staticmethod
    def sweep_stale() -> None:
        """Remove what a killed run left (its namespaces name its pid and run id)."""
        for line in swarm_nodes._ip("netns", "list", check=False).stdout.splitlines():
            parts = line.split()[0].split("-") if line.split() else []
            if parts[:2] != ["opus", "data"] or len(parts) != 5 or not parts[2].isdigit():
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(parts[2]), 0)
                continue
            swarm_nodes._ip("netns", "del", "-".join(parts), check=False)
            swarm_nodes._ip("link", "del", f"osd{parts[3]}", check=False)

    def up(self) -> None:
        ip = swarm_nodes._ip
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        for netns, veth, address in self.spaces.values():
            ip("netns", "add", netns)
            ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
            ip("link", "set", veth, "master", self.bridge, "up")
            for args in (("addr", "add", f"{address}/24", "dev", "eth0"),
                         ("link", "set", "eth0", "up"), ("link", "set", "lo", "up")):
                ip("-n", netns, *args)

    def down(self) -> None:
        for netns, veth, _ in self.spaces.values():
            swarm_nodes._ip("netns", "del", netns, check=False)
            swarm_nodes._ip("link", "del", veth, check=False)
        swarm_nodes._ip("link", "del", self.bridge, check=False)

    def address(self, who: str) -> str:
        return self.spaces[who][2]

    def psql(self, who: str, url: str) -> subprocess.CompletedProcess[str]:
        """A real client in that namespace: who it is, and whether it speaks TLS."""
        return subprocess.run(
            ["nsenter", f"--net=/run/netns/{self.spaces[who][0]}", PSQL, url, "-XtAc",
             "SELECT current_user || ' ' || ssl FROM pg_stat_ssl "
             "WHERE pid = pg_backend_pid()"],
            capture_output=True, text=True, timeout=30, check=False, stdin=subprocess.DEVNULL,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PGCONNECT_TIMEOUT": "5",
                 "HOME": "/nonexistent"})


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    require_root("network namespaces need root")
    for tool in ("ip", "nsenter", PSQL, "/usr/lib/postgresql/15/bin/postgres"):
        require_tool(tool)
    Net.sweep_stale()
    made = Net()
    try:
        made.up()
        yield made
    finally:
        made.down()


def _tcp_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=2):
        return True
    return False


def test_a_node_reaches_its_apps_database_over_verified_tls_and_nothing_else(
        opus: Opus, admin_key: SshKey, net: Net) -> None:
    done = opus.cli("addons:enable", "postgres")
    assert "Postgres is running" in done.stdout, done.stdout
    for app in ("swnodea", "swnodeb"):
        opus.cli("apps:create", app)
        assert f"Created the database app_{app}" in opus.cli("pg:create", app).stdout
    settings = settings_module.load(opus.env)
    store = Store(opus.home / "opus.db")
    a, b = store.get_app("swnodea"), store.get_app("swnodeb")
    assert a is not None and b is not None
    for hostile in (["10.0.0.1/0"], ["all"], [net.address("node"), "0.0.0.0"]):
        with pytest.raises(InvalidName):
            nodes.allow_nodes(settings, store, hostile)
    assert not _tcp_open(net.gateway, server.PORT)
    try:
        change = nodes.allow_nodes(settings, store, [net.address("node")])
        assert change.listen == (net.gateway,) and change.restarted, change
        # Idempotent: the same nodes again only reload.
        assert not nodes.allow_nodes(settings, store, [net.address("node")]).restarted
        cert, key = server.tls_files(settings)
        assert private_ca.hosts_of(cert.read_text()) == [net.gateway]
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        ca = str(private_ca.ca_cert_path(settings))
        url_a = nodes.database_url_for_nodes(settings, store, a, ca_path=ca)
        url_b = nodes.database_url_for_nodes(settings, store, b, ca_path=ca)
        assert url_a.startswith("postgres://app_swnodea:") and \
            f"@{net.gateway}:5432/app_swnodea?sslmode=verify-full&sslrootcert={ca}" in url_a
        assert nodes.database_url_for_nodes(settings, store, a).endswith(
            "sslrootcert=/etc/opus/ca.crt")
        for bad_path in ("/x&sslmode=disable", "/x?a=b", "x.crt", "/x y", "/x\n", "/x#"):
            with pytest.raises(InvalidName):
                nodes.database_url_for_nodes(settings, store, a, ca_path=bad_path)

        works = net.psql("node", url_a)
        assert (works.returncode, works.stdout.strip()) == (0, "app_swnodea true"), works.stderr
        plain = net.psql("node", url_a.replace("sslmode=verify-full", "sslmode=disable"))
        assert plain.returncode != 0 and "no encryption" in plain.stderr, plain.stderr
        stranger = net.psql("stranger", url_a)
        assert stranger.returncode != 0 and "no pg_hba.conf entry" in stranger.stderr, \
            stranger.stderr
        # A's role and password asking for B's database, from the allowed node: refused.
        other_db = net.psql("node", url_a.replace("/app_swnodea?", "/app_swnodeb?"))
        assert other_db.returncode != 0 and "pg_hba.conf rejects" in other_db.stderr, \
            other_db.stderr
        assert net.psql("node", url_b).stdout.strip() == "app_swnodeb true"
        # The admin role from a node: refused, whatever the password.
        admin = net.psql("node", url_a.replace("app_swnodea:", "opus_admin:", 1))
        assert admin.returncode != 0 and "pg_hba.conf rejects" in admin.stderr, admin.stderr
        # verify-full against another CA: the client refuses the server.
        other_ca = _settings_in(Path(os.environ.get("TMPDIR", "/tmp")) /
                                f"opus-data-ca-{secrets.token_hex(3)}")
        try:
            wrong = net.psql("node", url_a.replace(ca, str(private_ca.ensure(other_ca))))
            assert wrong.returncode != 0 and "certificate verify failed" in wrong.stderr, \
                wrong.stderr
        finally:
            for path in (private_ca.ca_cert_path(other_ca), private_ca.ca_key_path(other_ca),
                         private_ca.ca_dir(other_ca) / ".lock"):
                path.unlink(missing_ok=True)
            private_ca.ca_dir(other_ca).rmdir()
            other_ca.home.rmdir()
        # A database made later is reachable from the nodes already allowed.
        opus.cli("apps:create", "swnodec")
        opus.cli("pg:create", "swnodec")
        c = store.get_app("swnodec")
        assert c is not None
        url_c = nodes.database_url_for_nodes(settings, store, c, ca_path=ca)
        assert net.psql("node", url_c).stdout.strip() == "app_swnodec true"
    finally:
        back = nodes.allow_nodes(settings, store, [])
        for app in ("swnodea", "swnodeb", "swnodec"):
            opus.cli("apps:destroy", app, "--confirm", app, check=False)
    assert back.listen == () and back.restarted
    assert not nodes.state_file(settings).exists()
    assert not _tcp_open(net.gateway, server.PORT)
    assert "host" not in (server.data_dir(settings) / "pg_hba.conf").read_text().replace(
        "#", "")


def test_a_pinned_app_stays_where_it_runs_else_goes_to_the_first_node() -> None:
    assert pinning.pinned_node(["web-2", "web-2"], ["web-1", "web-2", "web-3"]) == "web-2"
    assert pinning.pinned_node([], ["web-3", "web-1"]) == "web-1"
    # Spread over several nodes (before it was pinned): the first node by name.
    assert pinning.pinned_node(["web-3", "web-2"], ["web-3", "web-2"]) == "web-2"
    assert pinning.pinned_node([], []) is None


# ---- a swarm task reaches its database, verifying Opus's CA from its config ------------

BUSYBOX = "/bin/busybox"
# The web task: psql with the DATABASE_URL of the
# release's secret, its answer (or error) served on the slot's port by busybox httpd.
ASK = ("trap 'exit 0' TERM; mkdir -p /tmp/www; "
       "url=$(sed -n 's/.*\"DATABASE_URL\": \"\\([^\"]*\\)\".*/\\1/p' \"$OPUS_CONFIG_FILE\"); "
       "PGCONNECT_TIMEOUT=5 /usr/lib/postgresql/15/bin/psql \"$url\" -XtAc "
       "\"SELECT current_user || ' ' || ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()\" "
       ">/tmp/www/index.html 2>&1; "
       '/bin/busybox httpd -f -p "$((OPUS_PORT_BASE + OPUS_SLOT - 1))" -h /tmp/www & wait')
ASK_HEALTH = services.Health(
    command=("exec wget -q -O /dev/null "
             "http://127.0.0.1:$((OPUS_PORT_BASE + OPUS_SLOT - 1))/"),
    interval="2s", start_period="20s")


def _ask_rootfs(path: Path) -> None:
    """busybox, and psql with the libraries it loads (as `ldd` finds them here)."""
    found = subprocess.run(["ldd", PSQL], capture_output=True, text=True, check=True).stdout
    libraries = sorted({word for line in found.splitlines() for word in line.split()
                        if word.startswith("/")})
    with tarfile.open(path, "w") as tar:
        made: set[str] = set()

        def add(name: str, data: bytes | None = None, kind: bytes = tarfile.REGTYPE,
                link: str = "") -> None:
            parts = name.split("/")
            for depth in range(1, len(parts)):
                directory = "/".join(parts[:depth])
                if directory not in made:
                    made.add(directory)
                    add(directory, kind=tarfile.DIRTYPE)
            info = tarfile.TarInfo(name)
            info.mode, info.type, info.linkname = 0o755, kind, link
            info.size = len(data) if data is not None else 0
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
        add("bin/busybox", Path(BUSYBOX).read_bytes())
        for tool in ("sh", "wget", "sed", "mkdir"):
            add(f"bin/{tool}", kind=tarfile.SYMTYPE, link="busybox")
        add(PSQL.lstrip("/"), Path(PSQL).read_bytes())
        for library in libraries:
            add(library.lstrip("/"), Path(library).read_bytes())
        add("etc/passwd", b"root:x:0:0::/:/bin/sh\n")


def test_a_swarm_task_verifies_postgres_with_the_ca_its_deploy_mounts(
        opus: Opus, admin_key: SshKey, tmp_path: Path) -> None:
    require_root("the swarm nodes need network and mount namespaces")
    for tool in (swarm_nodes.DOCKERD, swarm_nodes.DOCKER, BUSYBOX, PSQL, "ip", "nsenter",
                 "unshare", "ldd"):
        require_tool(tool)
    opus.cli("addons:enable", "postgres", check=False)
    opus.cli("apps:create", "swnodeca")
    opus.cli("pg:create", "swnodeca")
    _ask_rootfs(tmp_path / "ask.tar")
    began = time.monotonic()
    with swarm_nodes.swarm_nodes(1) as swarm:
        image = swarm.load_image(tmp_path / "ask.tar", "opus-test/ask:1")
        env = {**opus.env, "OPUS_SWARM_MANAGER": str(swarm.manager.socket),
               "OPUS_SWARM_DEPLOY_TIMEOUT": "40"}
        settings = settings_module.load(env)
        store = Store(settings.db_path)
        app = store.get_app("swnodeca")
        assert app is not None
        mgr = swarm_mgr.manager(settings)
        try:
            # Postgres does not listen for nodes yet: the deploy stops, saying what to do.
            with pytest.raises(UsageError, match="opus nodes:add HOST"):
                deploy.node_config(settings, store, app, {})
            nodes.allow_nodes(settings, store, [swarm.manager.address])
            store.set_scheduler(app, "swarm")
            lines: list[str] = []
            with locks.app_lock(settings, app.name):
                deploy.deploy(
                    settings, store, app, 1, image,
                    deploy.node_config(settings, store, app, {"GREETING": "hi"}),
                    lines.append, args=("/bin/sh", "-c", ASK), health=ASK_HEALTH,
                    record=lambda port: store.set_live(app, 1, port)).finish(lines.append)
            live = store.get_swarm_release(app, 1)
            assert live is not None
            member = next(m for m in store.swarm_members(app) if m.version == 1)
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            with opener.open(f"http://{member.host}:{member.port}/", timeout=5) as response:
                answer = response.read().decode().strip()
            assert answer == "app_swnodeca true", answer
            # The CA is a config named after its content, root's and read-only in the task.
            pem = private_ca.ca_cert_path(settings).read_bytes()
            name = services.ca_config_name(pem)
            spec = mgr("service", "inspect", "-f", "{{json .Spec.TaskTemplate.ContainerSpec}}",
                       live.services[0])
            assert f'"ConfigName":"{name}"' in spec and '"Name":"/etc/opus/ca.crt"' in spec \
                and '"Mode":292' in spec, spec
            assert mgr("config", "inspect", "-f", "{{json .Spec.Data}}", name).strip() \
                .strip('"') != ""
            assert deploy.ensure_ca_config(settings, mgr) == name     # reused, not made anew
            # An old CA's config goes at the scheduler's next turn; the current one (in
            # use), and a config not labelled as Opus's CA, stay.
            for old, label in (("opus-ca-000000000000", "opus.ca=1"),
                               ("opus-ca-111111111111", "other=1")):
                subprocess.run([swarm_mgr.DOCKER, "-H", mgr.host, "config", "create", "--label",
                                label, old, "-"], input=b"old", check=True,
                               capture_output=True)
            assert prune.forget_ca_configs(settings) == ["opus-ca-000000000000"]
            left = mgr("config", "ls", "--format", "{{.Name}}").split()
            assert name in left and "opus-ca-111111111111" in left, left
            assert "opus-ca-000000000000" not in left, left
            print(f"nodes to answer: {time.monotonic() - began:.1f} s")
        finally:
            deploy.retire(settings, store, app, print)
            nodes.allow_nodes(settings, store, [])
            opus.cli("apps:destroy", "swnodeca", "--confirm", "swnodeca", check=False)
