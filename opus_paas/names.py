"""Every name pattern in one place.

A name that does not match is rejected with a message, never "cleaned".
"""

from __future__ import annotations

import hashlib
import ipaddress
import re

from opus_paas.errors import InvalidName

APP_NAME = re.compile(r"[a-z](?:[a-z0-9-]{0,28}[a-z0-9])?")
USER_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
CONFIG_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
PROCESS_TYPE = re.compile(r"[A-Za-z0-9._-]{1,63}")
# One DNS label, or several joined by dots; lower case only.
DOMAIN = re.compile(r"(?=.{1,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*"
                    r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
# The path a git client sends: an optional leading slash, the app, ".git" optional.
REPO_PATH = re.compile(r"/?([a-z](?:[a-z0-9-]{0,28}[a-z0-9])?)(?:\.git)?/?")

# A branch name as `git check-ref-format --branch` accepts it, minus what a shell, an
# option parser or a terminal could misread: printable ASCII without space, no leading
# '-' or '.', no '..', '@{', '//', trailing '/', '.lock' or '.' component ends.
BRANCH_NAME = re.compile(r"(?!.*\.\.)(?!.*@\{)(?!.*//)(?!.*\.lock(?:/|$))(?!.*/\.)(?!.*\./)"
                         r"(?!.*\.$)[A-Za-z0-9_][A-Za-z0-9_./+@=-]{0,199}(?<!/)")
MAX_REF_LENGTH = 255
# A count or a release number: ASCII digits only (str.isdigit() also takes "²").
NUMBER = re.compile(r"[0-9]{1,6}")

# A Python version an operator asks Opus to fetch (3.13, or 3.13.1 exactly), and an
# interpreter Opus fetched, as uv names its installations (cpython-3.13.0-linux-x86_64-gnu).
PYTHON_VERSION = re.compile(r"3\.([0-9]{1,2})(?:\.[0-9]{1,3})?")
PYTHON_INSTALL = re.compile(r"cpython-3\.[0-9]{1,2}\.[0-9]{1,3}(?:(?:a|b|rc)[0-9]{1,2})?"
                            r"(?:\+[a-z]{1,16})?-linux-[a-z0-9_]{1,16}-[a-z]{3,12}")

# A swarm node's name in Opus (its opus.node label): like an app's name.
NODE_NAME = APP_NAME

# Names that would collide with Opus's own programs or hostnames.
RESERVED_APP_NAMES = frozenset({"opus", "www", "git", "ssh", "front", "supervisor"})


def _reject(kind: str, value: str, rule: str) -> InvalidName:
    shown = value if len(value) <= 64 and value.isprintable() else repr(value[:64])
    return InvalidName(f"invalid {kind} {shown}: {rule}")


def check_app_name(name: str) -> str:
    """Return `name` if it is a valid app name, else raise InvalidName."""
    if not APP_NAME.fullmatch(name):
        raise _reject(
            "app name", name,
            "use 1-30 characters: lower-case letters, digits and '-', "
            "starting with a letter and not ending with '-'",
        )
    if name in RESERVED_APP_NAMES:
        raise _reject("app name", name, "this name is reserved for Opus; choose another")
    return name


def check_user_name(name: str) -> str:
    """Return `name` if it is a valid user name, else raise InvalidName."""
    if not USER_NAME.fullmatch(name):
        raise _reject(
            "user name", name,
            "use 1-32 characters: lower-case letters, digits, '_' and '-', "
            "starting with a letter",
        )
    return name


def check_config_key(key: str) -> str:
    """Return `key` if it is a valid config variable name, else raise InvalidName."""
    if not CONFIG_KEY.fullmatch(key):
        raise _reject(
            "config key", key,
            "use letters, digits and '_', not starting with a digit (e.g. DATABASE_URL)",
        )
    return key


def check_process_type(name: str) -> str:
    """Return `name` if it is a valid Procfile process type, else raise InvalidName."""
    if not PROCESS_TYPE.fullmatch(name):
        raise _reject("process type", name, "use letters, digits, '.', '_' and '-' only")
    return name


def check_domain(name: str) -> str:
    """Return `name` if it is a valid lower-case host name, else raise InvalidName."""
    if not DOMAIN.fullmatch(name):
        raise _reject("domain", name, "use a lower-case host name such as www.example.com")
    return name


def check_node_name(name: str) -> str:
    """Return `name` if it is a valid node name, else raise InvalidName."""
    if not NODE_NAME.fullmatch(name):
        raise _reject("node name", name,
                      "use 1-30 characters: lower-case letters, digits and '-', starting "
                      "with a letter and not ending with '-'")
    return name


def check_node_host(host: str) -> str:
    """Return `host` if it is an IP address literal or a DNS name (no user@, no port,
    nothing an ssh or shell could read as an option), else raise InvalidName."""
    try:
        if "%" not in host:          # no IPv6 scope (an interface name)
            return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not DOMAIN.fullmatch(host) or host.replace(".", "").isdigit():
        raise _reject("host", host, "give the node's IP address or DNS name "
                      "(e.g. 10.0.0.12 or node2.example.com), without user@ or :port "
                      "(use --port)")
    return host


def check_branch_name(name: str) -> str:
    """Return `name` if it is a valid branch name (without refs/heads/), else raise."""
    if not BRANCH_NAME.fullmatch(name) or name == "HEAD":
        raise _reject(
            "branch name", name,
            "use letters, digits and '_ . / + @ = -', not starting with '-' or '.', "
            "without '..', '//', '@{' or a '.lock' ending (e.g. main, release/v2)",
        )
    return name


def check_ref_name(ref: bytes) -> str:
    """Return a pushed ref name as text if Opus stores it: refs/heads/<branch> or
    refs/tags/<tag>, both with branch-name rules; anything else raises InvalidName."""
    try:
        text = ref.decode("ascii")
    except UnicodeDecodeError:
        raise _reject("ref name", ref.decode("utf-8", "replace"),
                      "use ASCII letters, digits and '_ . / + @ = -'") from None
    if len(text) > MAX_REF_LENGTH:
        raise _reject("ref name", text, f"keep it under {MAX_REF_LENGTH} characters")
    for prefix in ("refs/heads/", "refs/tags/"):
        if text.startswith(prefix):
            check_branch_name(text[len(prefix):])
            return text
    raise _reject("ref name", text, "push branches (refs/heads/...) or tags (refs/tags/...)")


def app_from_repo_path(path: str) -> str:
    """The app named by a git client's repository path ('/myapp.git' → 'myapp')."""
    match = REPO_PATH.fullmatch(path)
    if not match:
        raise _reject(
            "repository path", path,
            "push to ssh://git@HOST:PORT/APP.git where APP is the app's name",
        )
    return check_app_name(match.group(1))


def preview_app_name(parent: str, branch: str, max_length: int = 30, *,
                     suffix: bool = False) -> str:
    """The preview app of `parent` for `branch`: `parent-branch` in app-name rules, '/'
    read as '-' (feature/x → parent-feature-x). Any other change (upper case, other
    characters, truncation), or `suffix` (the plain name is taken), adds a short hash of
    the branch, so two branches never share a name by accident. InvalidName if `parent`
    leaves no room for one."""
    check_app_name(parent)
    check_branch_name(branch)
    slug = re.sub(r"[^a-z0-9]+", "-", branch.lower()).strip("-")
    room = max_length - len(parent) - 1
    if slug == branch.replace("/", "-") and len(slug) <= room and not suffix:
        return check_app_name(f"{parent}-{slug}")
    digest = hashlib.sha256(branch.encode("ascii")).hexdigest()[:6]
    room -= len(digest) + 1
    if room < 0:
        raise _reject("app name", parent, f"previews are named {parent}-BRANCH within "
                      f"{max_length} characters; rename the app to a shorter name to have them")
    slug = slug[:room].strip("-")
    return check_app_name(f"{parent}-{slug}-{digest}" if slug else f"{parent}-{digest}")
