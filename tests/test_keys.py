"""Public key parsing and registration."""

from __future__ import annotations

import base64
import os
import struct
import subprocess
from pathlib import Path

import pytest

from opus_paas import users
from opus_paas.access import OPERATOR
from opus_paas.errors import Conflict, InvalidName, NotFound
from opus_paas.store import Store
from tests.conftest import require_tool


def _blob(*fields: bytes) -> bytes:
    """SSH length-prefixed strings, as a public key blob is made of."""
    return b"".join(struct.pack(">I", len(f)) + f for f in fields)


def _line(*fields: bytes) -> str:
    return f"{fields[0].decode()} {base64.b64encode(_blob(*fields)).decode()} made"


@pytest.fixture
def real_key(tmp_path: Path) -> str:
    require_tool("ssh-keygen")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "me@laptop",
                    "-f", str(tmp_path / "k")], check=True)
    return (tmp_path / "k.pub").read_text()


@pytest.fixture
def store(tmp_path: Path) -> Store:
    db = Store(tmp_path / "opus.db")
    db.init()
    return db


def test_fingerprint_matches_ssh_keygen(real_key: str, tmp_path: Path) -> None:
    parsed = users.parse_public_key(real_key)
    shown = subprocess.run(["ssh-keygen", "-l", "-f", str(tmp_path / "k.pub")],
                           capture_output=True, text=True, check=True).stdout.split()[1]
    assert parsed.fingerprint == shown
    assert parsed.comment == "me@laptop"


def test_first_user_is_admin_and_later_ones_developers(store: Store, real_key: str,
                                                       tmp_path: Path) -> None:
    first, _ = users.add_key(store, OPERATOR, "alice", real_key, max_keys=20)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k2")],
                   check=True)
    second, _ = users.add_key(store, OPERATOR, "bob", (tmp_path / "k2.pub").read_text(),
                             max_keys=20)
    assert (first.role, second.role) == ("admin", "developer")


def test_duplicate_key_is_refused(store: Store, real_key: str) -> None:
    users.add_key(store, OPERATOR, "alice", real_key, max_keys=20)
    with pytest.raises(Conflict, match="already registered"):
        users.add_key(store, OPERATOR, "bob", real_key, max_keys=20)


def test_removed_key_no_longer_authenticates(store: Store, real_key: str) -> None:
    _, key = users.add_key(store, OPERATOR, "alice", real_key, max_keys=20)
    assert store.user_for_key(key.fingerprint) is not None
    users.remove_key(store, OPERATOR, key.fingerprint)
    assert store.user_for_key(key.fingerprint) is None
    with pytest.raises(NotFound):
        users.remove_key(store, OPERATOR, key.fingerprint)


@pytest.mark.parametrize("text", [
    "",
    "garbage",
    "ssh-ed25519",
    "ssh-ed25519 !!!notbase64!!!",
    'command="/bin/sh" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOg4 x',
    "ssh-dss AAAAB3NzaC1kc3MAAACBAP x",
    "ssh-ed25519 " + base64.b64encode(b"\0\0\0\x07ssh-rsa" + b"x" * 32).decode(),
    # A whole ed25519 key with something after it, or a key of the wrong length.
    "ssh-ed25519 " + base64.b64encode(_blob(b"ssh-ed25519", b"k" * 32, b"more")).decode(),
    "ssh-ed25519 " + base64.b64encode(_blob(b"ssh-ed25519", b"k" * 31)).decode(),
    "ssh-rsa " + base64.b64encode(_blob(b"ssh-rsa", b"\x01\x00\x01")).decode(),
    # A length running past the end.
    "ssh-ed25519 " + base64.b64encode(_blob(b"ssh-ed25519") + b"\0\0\1\0k").decode(),
    # A huge blob: within the 64 KiB a command reads, far beyond any real key.
    "ssh-rsa " + base64.b64encode(_blob(b"ssh-rsa", b"\x01\x00\x01",
                                        b"\x00" + b"n" * 50_000)).decode(),
])
def test_malformed_keys_are_refused(text: str) -> None:
    with pytest.raises(InvalidName):
        users.parse_public_key(text)


def test_two_keys_in_one_file_are_refused(real_key: str) -> None:
    with pytest.raises(InvalidName, match="exactly one"):
        users.parse_public_key(real_key + real_key)


@pytest.mark.parametrize("comment", ["\x1b[31m", "\u202egnp.exe", "a\x7fb", "\x00"])
def test_comment_with_control_characters_is_refused(real_key: str, comment: str) -> None:
    with pytest.raises(InvalidName, match="control"):
        users.parse_public_key(real_key.strip() + " " + comment)


def test_huge_key_is_refused_with_what_to_give(real_key: str) -> None:
    data = base64.b64encode(_blob(b"ssh-ed25519", b"k" * 32) + b"x" * 8000).decode()
    with pytest.raises(InvalidName, match=r"longer than 4096 bytes.*the \.pub file"):
        users.parse_public_key(f"ssh-ed25519 {data}")


@pytest.mark.parametrize(("kind", "bits"), [("rsa", "3072"), ("ecdsa", "256"),
                                            ("ecdsa", "384"), ("ecdsa", "521")])
def test_every_kind_ssh_keygen_makes_is_accepted(tmp_path: Path, kind: str,
                                                 bits: str) -> None:
    require_tool("ssh-keygen")
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-b", bits, "-N", "", "-f",
                    str(tmp_path / "k")], check=True)
    assert users.parse_public_key((tmp_path / "k.pub").read_text()).key_type.startswith(
        ("ssh-rsa", "ecdsa-sha2-nistp"))


def test_security_key_kinds_are_accepted() -> None:
    sk_ed = _line(b"sk-ssh-ed25519@openssh.com", os.urandom(32), b"ssh:")
    sk_ec = _line(b"sk-ecdsa-sha2-nistp256@openssh.com", b"nistp256", b"\x04" + b"q" * 64,
                  b"ssh:")
    assert users.parse_public_key(sk_ed).comment == "made"
    assert users.parse_public_key(sk_ec).comment == "made"


def test_a_user_holds_at_most_max_keys(store: Store, real_key: str) -> None:
    mine = [_line(b"ssh-ed25519", os.urandom(32)) for _ in range(3)]
    users.add_key(store, OPERATOR, "alice", mine[0], max_keys=2)
    users.add_key(store, OPERATOR, "alice", mine[1], max_keys=2)
    with pytest.raises(Conflict, match=r"alice has 2 SSH keys, the most one user may have "
                                       r"\(ssh_keys_per_user = 2\); remove one first: "
                                       r"`opus keys` lists them, `opus keys:remove "
                                       r"FINGERPRINT\|NAME` removes one"):
        users.add_key(store, OPERATOR, "alice", mine[2], max_keys=2)
    assert [k.user for k in store.list_keys()] == ["alice", "alice"]
    users.add_key(store, OPERATOR, "bob", real_key, max_keys=2)   # others are not affected
    users.remove_key(store, OPERATOR, users.parse_public_key(mine[0]).fingerprint)
    users.add_key(store, OPERATOR, "alice", mine[2], max_keys=2)


def test_hostile_user_name_is_refused(store: Store, real_key: str) -> None:
    with pytest.raises(InvalidName):
        users.add_key(store, OPERATOR, "root;id", real_key, max_keys=20)
    assert store.list_keys() == []


def test_cli_keys_add_from_stdin_list_and_remove(real_key: str, tmp_path: Path) -> None:
    import os
    import sys

    env = {**os.environ, "OPUS_HOME": str(tmp_path / "home")}

    def opus(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "opus_paas", *args], input=stdin,
                              env=env, capture_output=True, text=True, check=False)

    added = opus("keys:add", "carol", "-", stdin=real_key)
    assert added.returncode == 0, added.stderr
    fingerprint = users.parse_public_key(real_key).fingerprint
    assert f"Added key {fingerprint} for carol (admin)." in added.stdout
    assert f"carol            {fingerprint}  me@laptop" in opus("keys").stdout
    again = opus("keys:add", "carol", "-", stdin=real_key)
    assert again.returncode == 5 and again.stderr.startswith("opus: key ")
    missing = opus("keys:add", "carol", str(tmp_path / "nope.pub"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    assert opus("keys:remove", fingerprint).returncode == 0
    assert "No keys yet" in opus("keys").stdout


def test_a_comment_never_shadows_another_keys_fingerprint(store: Store, real_key: str,
                                                          tmp_path: Path) -> None:
    _, first = users.add_key(store, OPERATOR, "alice", real_key, max_keys=20)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", first.fingerprint,
                    "-f", str(tmp_path / "k3")], check=True)
    users.add_key(store, OPERATOR, "bob", (tmp_path / "k3.pub").read_text(), max_keys=20)
    assert users.remove_key(store, OPERATOR, first.fingerprint).user == "alice"
    with pytest.raises(NotFound):
        users.remove_key(store, OPERATOR, "")
