"""SSH public keys → users: parsing, fingerprints, registration."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import struct

from opus_paas import names
from opus_paas.errors import InvalidName
from opus_paas.store import Key, Store, User

KEY_TYPES = frozenset({
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
})


@dataclasses.dataclass(frozen=True)
class PublicKey:
    key_type: str
    blob: bytes
    comment: str

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.blob)

    @property
    def line(self) -> str:
        return f"{self.key_type} {base64.b64encode(self.blob).decode()}"


def fingerprint(blob: bytes) -> str:
    """OpenSSH's SHA256 fingerprint of a key blob."""
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


def parse_public_key(text: str) -> PublicKey:
    """Parse one OpenSSH public key line; options (command=…) and garbage are refused."""
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if len(lines) != 1:
        raise InvalidName(
            f"expected exactly one public key line, found {len(lines)}; "
            "add keys one at a time (the contents of ~/.ssh/id_ed25519.pub)"
        )
    fields = lines[0].split(None, 2)
    if len(fields) < 2 or fields[0] not in KEY_TYPES:
        raise InvalidName(
            "not an OpenSSH public key: it must start with the key type "
            f"({', '.join(sorted(KEY_TYPES))}); options such as command= are not accepted"
        )
    key_type, data = fields[0], fields[1]
    try:
        blob = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidName("the key's base64 data is damaged; copy the .pub file again") from None
    # The blob starts with its own type name; it must agree with the line's.
    try:
        (length,) = struct.unpack(">I", blob[:4])
        inner_type = blob[4:4 + length].decode("ascii")
    except (struct.error, UnicodeDecodeError):
        inner_type = ""
    if inner_type != key_type:
        raise InvalidName("the key's data does not match its type; copy the .pub file again")
    comment = fields[2].strip() if len(fields) == 3 else ""
    if not comment.isprintable():
        raise InvalidName("the key's comment has control characters; edit it out")
    return PublicKey(key_type, blob, comment[:200])


def add_key(store: Store, user: str, text: str) -> tuple[User, PublicKey]:
    """Register the key in `text` for `user` (created if new; the first user is admin)."""
    names.check_user_name(user)
    key = parse_public_key(text)
    owner = store.add_key(user, key.fingerprint, key.line, key.comment)
    return owner, key


def list_keys(store: Store) -> list[Key]:
    return store.list_keys()


def remove_key(store: Store, fingerprint_: str) -> Key:
    return store.remove_key(fingerprint_)
