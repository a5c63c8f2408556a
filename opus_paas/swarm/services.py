"""Swarm services of an app's release (pure: no I/O).

One service per process type per release, named `<app>-<type>-v<N>` and labelled
`opus.app`, `opus.ptype`, `opus.release` (whoever lists an app's services filters on
`label=opus.app=APP`). Tasks run on the nodes' own network (`--network host`, no
routing mesh): a release takes a block of SLOTS ports, and the task in slot N listens
on `port_base + N - 1`, so two tasks of one service may share a node after a
reschedule and the blocks of the live and the new release never meet. Every task runs
as the app's uid (the same on every node), on a read-only root with a tmpfs /tmp, with
every capability dropped; its config vars come from a Docker secret (a file, never in
`docker inspect`). A task of an app with a database on Opus's Postgres also gets
Opus's CA certificate (public part) as a Docker config at /etc/opus/ca.crt, where its
DATABASE_URL's `sslrootcert` points (data/nodes.py). A pinned app's tasks mount its
data volume (`opus-data-APP`, its own only) read-write at /data (volumes.py). A
one-off task (the release command of a pinned app) is a replicated job run once.

`create_argv(spec)` is the `docker service create` command line of a `ServiceSpec`;
every value in it is checked here, whatever the store holds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re

from opus_paas import names
from opus_paas.errors import UsageError
from opus_paas.run.checks import PATH as CHECK_PATH
from opus_paas.run.checks import Check
from opus_paas.settings import Settings
from opus_paas.store import App, Limits
from opus_paas.tls.private_ca import CA_IN_CONTAINER

SLOTS = 16                      # ports (task slots) per block
LABEL_APP = "opus.app"
LABEL_PTYPE = "opus.ptype"
LABEL_RELEASE = "opus.release"
SECRET_TARGET = "opus-env"  # noqa: S105 (a file name: /run/secrets/opus-env in a task)
ENV_FILE = f"/run/secrets/{SECRET_TARGET}"
CA_TARGET = CA_IN_CONTAINER        # where a task finds Opus's CA certificate
CA_CONFIG_PREFIX = "opus-ca-"
CA_CONFIG = re.compile(r"opus-ca-[0-9a-f]{12}")
CONFIG_ENV = "OPUS_CONFIG_FILE"    # where the image's entrypoint reads the config vars
DATA_TARGET = "/data"              # a pinned app's data volume in its tasks (OPUS_DATA_DIR)
VOLUME_PREFIX = "opus-data-"
MAX_PORT = 65535
MIN_MEMORY = 6 * 1024 * 1024    # dockerd refuses less
MAX_MEMORY = 1024 ** 4
MAX_CPUS = 512.0
PIDS_LIMIT = 4096
STOP_GRACE = "10s"
# Docker object names (services, secrets): up to 63 characters here.
DOCKER_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}")
# Mount paths, constraints and env values go inside CSV or `key==value` syntax: no
# commas, quotes, spaces or '=' where the syntax would read them.
MOUNT_PATH = re.compile(r"/[A-Za-z0-9._/-]{0,254}")
CONSTRAINT = re.compile(r"(node\.(?:labels\.[a-z0-9.-]{1,63}|role|hostname|id))"
                        r"(==|!=)([A-Za-z0-9._-]{1,63})")
ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]{0,63}")
ENV_VALUE = re.compile(r"[!-~]{0,256}")     # printable, no spaces (a template or a word)
DURATION = re.compile(r"[0-9]{1,4}(?:ms|s|m)")
# The health probe run inside a task (the release image has Debian's python3): GET of
# the app's check path on the task's own port. The values come from the environment,
# never from the command line, so no path reaches a shell.
HEALTH_PROBE = ("exec python3 -I -c \"import os,http.client as h;e=os.environ;"
                "c=h.HTTPConnection('127.0.0.1',int(e['OPUS_PORT_BASE'])+int(e['OPUS_SLOT'])-1,"
                "timeout=5);c.request('GET',e['OPUS_HEALTH_PATH'],"
                "headers={'Host':e['OPUS_HEALTH_HOST']});"
                "raise SystemExit(c.getresponse().status>=500)\"")


def block_base(settings: Settings, block: int) -> int:
    """The first port of port block `block` (task slot 1 listens there)."""
    if block < 0 or block >= max_blocks(settings):
        raise UsageError(f"port block {block} is outside the swarm's port range "
                         f"({settings.swarm_port_base}-{MAX_PORT}); lower swarm_port_base")
    return settings.swarm_port_base + block * SLOTS


def max_blocks(settings: Settings) -> int:
    return max(0, (MAX_PORT + 1 - settings.swarm_port_base) // SLOTS)


def slot_port(port_base: int, slot: int) -> int:
    """The port the task in `slot` (1-based) listens on."""
    if not 1 <= slot <= SLOTS:
        raise UsageError(f"a release runs at most {SLOTS} tasks of a type (slot {slot})")
    return port_base + slot - 1


def free_block(settings: Settings, used: set[int]) -> int:
    """The lowest block not in `used` (the blocks of releases whose services exist)."""
    for block in range(max_blocks(settings)):
        if block not in used:
            return block
    raise UsageError(f"every port block from {settings.swarm_port_base} is in use; "
                     "lower swarm_port_base or remove apps from the swarm")


def service_name(app: str, ptype: str, version: int) -> str:
    names.check_app_name(app)
    names.check_process_type(ptype)
    name = f"{app}-{ptype}-v{int(version)}"
    if version < 1 or not DOCKER_NAME.fullmatch(name):
        raise UsageError(f"the service name {name[:80]!r} is not one Docker takes (letters, "
                         "digits, '_', '.', '-'; at most 63 characters): use a shorter "
                         "process type name")
    return name


def secret_name(app: str, version: int) -> str:
    """The Docker secret holding release `version`'s config vars (one per release)."""
    names.check_app_name(app)
    return f"{app}-env-v{int(version)}"


def ca_config_name(cert_pem: bytes) -> str:
    """The Docker config holding Opus's CA certificate: named after its content, so a
    new CA is a new config and the same one is reused."""
    return CA_CONFIG_PREFIX + hashlib.sha256(cert_pem).hexdigest()[:12]


def volume_name(app: str) -> str:
    """The Docker volume holding a pinned app's data/ on its node."""
    names.check_app_name(app)
    return VOLUME_PREFIX + app


def labels(app: str, ptype: str, version: int) -> dict[str, str]:
    return {LABEL_APP: app, LABEL_PTYPE: ptype, LABEL_RELEASE: str(int(version))}


def task_uid(settings: Settings, app: App) -> int:
    """The uid the app's tasks run as, the same on every node."""
    return settings.swarm_uid_base + app.id


@dataclasses.dataclass(frozen=True)
class Health:
    """Docker's own health check of each task (Swarm replaces a task that fails it)."""

    path: str = "/"
    host: str = "localhost"
    interval: str = "5s"
    timeout: str = "5s"
    retries: int = 3
    start_period: str = "60s"
    command: str = HEALTH_PROBE      # run by /bin/sh in the task; values in its env

    @classmethod
    def of(cls, check: Check, host: str) -> Health | None:
        """From the app's `checks:set` record (None: the check is disabled)."""
        if check.disabled:
            return None
        start = int(min(max(check.timeout or 60, 1), 600))
        return cls(path=check.path, host=host, start_period=f"{start}s")


@dataclasses.dataclass(frozen=True)
class ServiceSpec:
    """What Opus asks of Swarm for one process type of one release."""

    name: str
    image: str
    app: str
    ptype: str
    version: int
    uid: int
    replicas: int
    port_base: int
    secret: str | None = None              # the release's config-vars secret
    ca_config: str | None = None           # Opus's CA certificate (ca_config_name)
    limits: Limits | None = None
    health: Health | None = None
    constraints: tuple[str, ...] = ()      # placement, e.g. pinning's node label
    mounts: tuple[tuple[str, str], ...] = ()   # (source on the node, target), read-only
    env: tuple[tuple[str, str], ...] = ()
    args: tuple[str, ...] = ()             # the command (default: the image's entrypoint)
    volume: str | None = None              # the app's data volume, at DATA_TARGET
    job: bool = False                      # a one-off: its task runs once, to its end


IMAGE = re.compile(r"[a-z0-9][a-z0-9._:/-]{0,200}(?:@sha256:[0-9a-f]{64})?|sha256:[0-9a-f]{64}")


def _check(spec: ServiceSpec) -> None:
    if spec.name != service_name(spec.app, spec.ptype, spec.version):
        raise UsageError(f"service {spec.name!r} is not named after its app, type and release")
    if not IMAGE.fullmatch(spec.image):
        raise UsageError(f"{spec.image[:80]!r} is not an image reference")
    if not 1 <= spec.uid <= 2**31 - 2:
        raise UsageError(f"uid {spec.uid} is out of range: check swarm_uid_base")
    if not 0 <= spec.replicas <= SLOTS:
        raise UsageError(f"{spec.ptype} takes 0 to {SLOTS} tasks on the swarm")
    if not 1024 <= spec.port_base <= MAX_PORT - SLOTS + 1:
        raise UsageError(f"port base {spec.port_base} is out of range: check swarm_port_base")
    if spec.secret is not None and not DOCKER_NAME.fullmatch(spec.secret):
        raise UsageError(f"{spec.secret[:80]!r} is not a secret name")
    if spec.ca_config is not None and not CA_CONFIG.fullmatch(spec.ca_config):
        raise UsageError(f"{spec.ca_config[:80]!r} is not the name of Opus's CA config "
                         f"({CA_CONFIG_PREFIX}<12 hex digits>)")
    for constraint in spec.constraints:
        if not CONSTRAINT.fullmatch(constraint):
            raise UsageError(f"placement constraint {constraint[:80]!r} is not one Opus makes")
    for source, target in spec.mounts:
        for path in (source, target):
            if not MOUNT_PATH.fullmatch(path) or "/../" in path + "/" or "//" in path:
                raise UsageError(f"mount path {path[:80]!r} must be absolute, plain "
                                 "(letters, digits, '.', '_', '-', '/')")
    for key, value in spec.env:
        if not ENV_NAME.fullmatch(key) or not ENV_VALUE.fullmatch(value):
            raise UsageError(f"environment {key[:40]!r} is not NAME=printable-word")
    if spec.volume is not None and spec.volume != volume_name(spec.app):
        raise UsageError(f"volume {spec.volume[:80]!r} is not {spec.app}'s own data volume "
                         f"({volume_name(spec.app)})")
    if spec.job and spec.replicas != 1:
        raise UsageError("a one-off task runs once (1 replica)")


def limit_args(limits: Limits | None) -> list[str]:
    """`--limit-memory BYTES --limit-cpu N`, refusing values Docker would misread."""
    if limits is None:
        return []
    args: list[str] = []
    memory, cpus = limits.memory_bytes, limits.cpus
    if memory is not None:
        if isinstance(memory, bool) or not isinstance(memory, int) or \
                not MIN_MEMORY <= memory <= MAX_MEMORY:
            raise UsageError(f"memory limit {memory!r} must be 6M to 1T (ps:resize APP "
                             "TYPE memory=512M)")
        args += ["--limit-memory", str(memory), "--reserve-memory", str(min(memory, 64 << 20))]
    if cpus is not None:
        if isinstance(cpus, bool) or not isinstance(cpus, (int, float)) or \
                not 0.01 <= float(cpus) <= MAX_CPUS:
            raise UsageError(f"cpu limit {cpus!r} must be 0.01 to {MAX_CPUS:.0f} (ps:resize "
                             "APP TYPE cpus=1)")
        args += ["--limit-cpu", f"{float(cpus):.2f}"]
    return args


def health_args(health: Health | None) -> tuple[list[str], list[tuple[str, str]]]:
    """Docker's health options and the environment the probe reads."""
    if health is None:
        return ["--no-healthcheck"], []
    if not CHECK_PATH.fullmatch(health.path):
        raise UsageError(f"health check path {health.path[:60]!r} must start with / and "
                         "hold printable characters only (checks:set APP path=/health)")
    if not names.DOMAIN.fullmatch(health.host) and health.host != "localhost":
        raise UsageError(f"{health.host[:60]!r} is not a host name")
    for value in (health.interval, health.timeout, health.start_period):
        if not DURATION.fullmatch(value):
            raise UsageError(f"{value[:20]!r} is not a duration such as 5s")
    if not 1 <= health.retries <= 100:
        raise UsageError("health retries take 1 to 100")
    return (["--health-cmd", health.command, "--health-interval", health.interval,
             "--health-timeout", health.timeout, "--health-retries", str(health.retries),
             "--health-start-period", health.start_period],
            [("OPUS_HEALTH_PATH", health.path), ("OPUS_HEALTH_HOST", health.host)])


def create_argv(spec: ServiceSpec) -> list[str]:
    """`service create …` (after `docker -H MANAGER`) for `spec`; raises UsageError on
    any value that is not what Opus makes."""
    _check(spec)
    health, health_env = health_args(spec.health)
    argv = ["service", "create", "--name", spec.name, "--detach",
            *(["--mode", "replicated-job", "--restart-condition", "none"] if spec.job
              else ["--replicas", str(spec.replicas)]),
            "--network", "host", "--read-only",
            "--mount", "type=tmpfs,destination=/tmp",
            "--cap-drop", "ALL", "--init", "--no-resolve-image", "--with-registry-auth",
            "--user", f"{spec.uid}:{spec.uid}",
            "--restart-delay", "1s", "--stop-grace-period", STOP_GRACE,
            "--limit-pids", str(PIDS_LIMIT),
            "--env", "OPUS_SLOT={{.Task.Slot}}",
            "--env", f"OPUS_PORT_BASE={spec.port_base}",
            "--env", f"OPUS_PTYPE={spec.ptype}",
            "--env", "HOME=/tmp", "--env", "TMPDIR=/tmp",
            "--hostname", "{{.Node.Hostname}}"]
    for key, value in sorted(labels(spec.app, spec.ptype, spec.version).items()):
        argv += ["--label", f"{key}={value}", "--container-label", f"{key}={value}"]
    argv += limit_args(spec.limits)
    argv += health
    for key, value in [*health_env, *spec.env]:
        argv += ["--env", f"{key}={value}"]
    if spec.secret is not None:
        argv += ["--secret", f"source={spec.secret},target={SECRET_TARGET},"
                             f"uid={spec.uid},gid={spec.uid},mode=0400",
                 "--env", f"{CONFIG_ENV}={ENV_FILE}"]
    if spec.ca_config is not None:
        # Root's, world-readable: the task's uid reads it, nobody writes it.
        argv += ["--config", f"source={spec.ca_config},target={CA_TARGET},"
                             "uid=0,gid=0,mode=0444"]
    for constraint in spec.constraints:
        argv += ["--constraint", constraint]
    for source, target in spec.mounts:
        argv += ["--mount", f"type=bind,source={source},destination={target},readonly"]
    if spec.volume is not None:
        # Made on the node at first use, as the image's /data (the app's uid, 0700).
        argv += ["--mount", f"type=volume,source={spec.volume},destination={DATA_TARGET}",
                 "--env", f"OPUS_DATA_DIR={DATA_TARGET}"]
    argv += ["--", spec.image, *spec.args]
    return argv
