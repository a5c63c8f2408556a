"""SSH public keys → users: parsing, fingerprints, registration."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import secrets
import struct

from opus_paas import access, names
from opus_paas.access import Actor
from opus_paas.errors import InvalidName, NotFound, UsageError
from opus_paas.store import Key, Store, User

# Each key type and the number of length-prefixed fields its blob holds, the type first
# (RFC 4253, 5656, 8709; PROTOCOL.u2f): ed25519 = type, key; rsa = type, e, n;
# ecdsa = type, curve, point; the security-key kinds add the application.
KEY_FIELDS = {
    "ssh-ed25519": 2,
    "ssh-rsa": 3,
    "ecdsa-sha2-nistp256": 3,
    "ecdsa-sha2-nistp384": 3,
    "ecdsa-sha2-nistp521": 3,
    "sk-ssh-ed25519@openssh.com": 3,
    "sk-ecdsa-sha2-nistp256@openssh.com": 4,
}
KEY_TYPES = frozenset(KEY_FIELDS)
# An RSA key of 16384 bits is about 2 KiB; nothing real comes near this.
MAX_KEY_BYTES = 4096


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
    if len(data) > MAX_KEY_BYTES * 4 // 3 + 4:
        raise InvalidName(f"the key is longer than {MAX_KEY_BYTES} bytes; no public key "
                          "is that long: give the .pub file (ed25519 keys are the shortest)")
    try:
        blob = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidName("the key's base64 data is damaged; copy the .pub file again") from None
    check_blob(key_type, blob)
    comment = fields[2].strip() if len(fields) == 3 else ""
    if not comment.isprintable():
        raise InvalidName("the key's comment has control characters; edit it out")
    return PublicKey(key_type, blob, comment[:200])


def check_blob(key_type: str, blob: bytes) -> None:
    """The blob is the line's key type followed by exactly that type's fields."""
    parts = _ssh_strings(blob)
    if not parts or parts[0] != key_type.encode():
        raise InvalidName("the key's data does not match its type; copy the .pub file again")
    if len(parts) != KEY_FIELDS[key_type] or (key_type.endswith("ed25519") and
                                              len(parts[1]) != 32):
        raise InvalidName(f"the key's data is not a whole {key_type} key; copy the .pub "
                          "file again")


def _ssh_strings(blob: bytes) -> list[bytes]:
    """A blob of SSH length-prefixed strings, split; [] if it is not exactly that."""
    parts, offset = [], 0
    while offset < len(blob):
        try:
            (length,) = struct.unpack_from(">I", blob, offset)
        except struct.error:
            return []
        if offset + 4 + length > len(blob):
            return []
        parts.append(blob[offset + 4:offset + 4 + length])
        offset += 4 + length
    return parts


def add_key(store: Store, actor: Actor, user: str, text: str, *,
            max_keys: int) -> tuple[User, PublicKey]:
    """Register the key in `text` for `user` (created if new; the first user is admin),
    who may hold at most `max_keys` keys. A developer adds keys for themselves only."""
    names.check_user_name(user)
    if actor.name != user:
        access.require_admin(actor, "add keys for another user")
    key = parse_public_key(text)
    owner = store.add_key(user, key.fingerprint, key.line, key.comment, max_keys=max_keys)
    return owner, key


def list_keys(store: Store, actor: Actor) -> list[Key]:
    """Every key for an admin; a developer's own otherwise."""
    return [k for k in store.list_keys() if actor.is_admin or k.user == actor.name]


def remove_key(store: Store, actor: Actor, which: str) -> Key:
    """Remove a key named by its fingerprint or its comment (name); a developer may
    remove only their own."""
    mine = list_keys(store, actor)
    # An exact fingerprint wins: a key's comment can never shadow another key.
    matches = [k for k in mine if k.fingerprint == which] or \
        [k for k in mine if which and k.comment == which]
    if not matches:
        raise NotFound(f"no key {which}; `opus keys` shows the keys you may remove")
    if len(matches) > 1:
        raise UsageError(f"{len(matches)} keys are named {which}; give the fingerprint")
    return store.remove_key(matches[0].fingerprint)


# ---- users ---------------------------------------------------------------------------

ROLES = ("admin", "developer")


def check_role(role: str) -> str:
    if role not in ROLES:
        raise UsageError(f"unknown role {role!r}; use admin or developer")
    return role


def add_user(store: Store, actor: Actor, name: str, role: str) -> User:
    access.require_admin(actor, "add users")
    return store.create_user(names.check_user_name(name), check_role(role))


def get_user(store: Store, name: str) -> User:
    user = store.get_user(name)
    if user is None:
        raise NotFound(f"no user {name}; `opus users` lists them")
    return user


def remove_user(store: Store, actor: Actor, name: str) -> User:
    access.require_admin(actor, "remove users")
    user = get_user(store, name)
    store.remove_user(user)
    return user


def set_role(store: Store, actor: Actor, name: str, role: str) -> User:
    access.require_admin(actor, "change roles")
    return store.set_role(get_user(store, name), check_role(role))


def set_password(store: Store, actor: Actor, name: str, password: str) -> User:
    """Set the dashboard password of `name` (yourself, or anyone for an admin)."""
    if actor.name != name:
        access.require_admin(actor, "set another user's password")
    user = get_user(store, name)
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UsageError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    store.set_password_hash(user, hash_password(password))
    return user


MIN_PASSWORD_LENGTH = 10
# scrypt's recommended interactive parameters: 16 MiB and ~50 ms a check.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 14, 8, 1


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${digest.hex()}"


def check_password(password: str, stored: str | None) -> bool:
    if not stored:
        return False
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        candidate = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n),
                                   r=int(r), p=int(p))
    except ValueError:
        return False
    return kind == "scrypt" and hmac.compare_digest(candidate.hex(), digest)
