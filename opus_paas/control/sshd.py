"""The SSH server: public-key auth, one exec of one allowed command per connection,
git over dulwich.

Identity comes from the key, never from the client. Every connection is logged once
with its request id, key, user, command and outcome; every failure reaches the client
as one `opus: …` line without server paths. Run as `python -m opus_paas.sshd`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import re
import shlex
import shutil
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable

import paramiko
from dulwich.errors import GitProtocolError, HangupException
from dulwich.protocol import Protocol
from paramiko.common import (
    AUTH_FAILED,
    AUTH_SUCCESSFUL,
    OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED,
    OPEN_SUCCEEDED,
)

from opus_paas import access, apps, locks, names, privileged, redact, users
from opus_paas import settings as settings_module
from opus_paas.access import Actor
from opus_paas.control import commands
from opus_paas.control.context import TERMINAL_COMMANDS, Context
from opus_paas.control.hostkey import load_or_create_host_key
from opus_paas.errors import Conflict, OpusError, UsageError, disk_full
from opus_paas.git import gitserver, packs
from opus_paas.git.wire import ChannelReader
from opus_paas.run import push, recovery, sleep
from opus_paas.settings import Settings
from opus_paas.store import Store, User

log = logging.getLogger("opus.sshd")

MAX_COMMAND_CHARS = 4096
GIT_COMMAND = re.compile(r"(git-receive-pack|git-upload-pack) '([^'\\\n]{1,200})'")
CLIENT_CLOSE_WAIT_SECONDS = 5
DISCONNECT_POLL_SECONDS = 0.25
# Environment variables a git client sends on its own; refused quietly (git then speaks
# protocol v0), every other env request gets a notice.
QUIET_ENV = frozenset({b"GIT_PROTOCOL", b"LANG", b"LC_ALL"})


class UserLimiter:
    """At most `limit` logged-in connections per user, all their keys together."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[str, int] = {}
        self._lock = threading.Lock()

    def acquire(self, user: str) -> bool:
        with self._lock:
            if self._open.get(user, 0) >= self.limit:
                return False
            self._open[user] = self._open.get(user, 0) + 1
            return True

    def release(self, user: str) -> None:
        with self._lock:
            self._open[user] -= 1
            if not self._open[user]:
                del self._open[user]


class SourceLimiter:
    """At most `limit` connections per source address that have not logged in yet, so
    that one address cannot fill the server with handshakes it never finishes. A
    refusal is logged at its 1st, 2nd, 4th, 8th, … time in a row for a source, so
    a flood cannot fill the log either."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[str, int] = {}
        self._refused: dict[str, int] = {}
        self._lock = threading.Lock()

    def admit(self, source: str) -> bool:
        with self._lock:
            held = self._open.get(source, 0)
            if held < self.limit:
                self._open[source] = held + 1
                return True
            refused = self._refused[source] = self._refused.get(source, 0) + 1
        if refused & (refused - 1) == 0:
            log.warning("refused a connection from %s: %d connections from it have not "
                        "logged in yet (ssh_unauthenticated_per_source = %d); %d refused in "
                        "a row", source, held, self.limit, refused)
        return False

    def release(self, source: str) -> None:
        with self._lock:
            self._open[source] -= 1
            if not self._open[source]:
                del self._open[source]
                self._refused.pop(source, None)


class Admission:
    """A connection's hold on its source's not-yet-logged-in slot, given back once."""

    def __init__(self, limiter: SourceLimiter, source: str) -> None:
        self.limiter, self.source = limiter, source
        self._held = True
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            held, self._held = self._held, False
        if held:
            self.limiter.release(self.source)


@dataclasses.dataclass
class Server:
    """What every connection shares."""

    settings: Settings
    store: Store
    host_key: paramiko.PKey
    users: UserLimiter
    sources: SourceLimiter


class Session(paramiko.ServerInterface):
    """One connection's auth and channel requests: a session channel and one exec."""

    def __init__(self, store: Store, request_id: str) -> None:
        self.store = store
        self.request_id = request_id
        self.user: User | None = None
        self.fingerprint = ""
        self.command: bytes | None = None
        self.notices: list[str] = []
        self.channel_opened = False
        self.pty: tuple[int, int, str] | None = None   # (columns, rows, TERM) asked for
        self.ready = threading.Event()

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        fingerprint = users.fingerprint(key.asbytes())
        try:
            user = self.store.user_for_key(fingerprint)
        except Exception:
            # paramiko would swallow it silently: log it, and refuse.
            log.exception("[%s] looking up key %s failed", self.request_id, fingerprint)
            return AUTH_FAILED
        if user is None:
            log.info("[%s] auth refused: unregistered key %s", self.request_id, fingerprint)
            return AUTH_FAILED
        self.user, self.fingerprint = user, fingerprint
        return AUTH_SUCCESSFUL

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session" and not self.channel_opened:
            self.channel_opened = True
            return OPEN_SUCCEEDED
        log.info("[%s] refused a %s channel", self.request_id, kind)
        return OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        if self.command is not None:
            return False
        self.command = command
        self.ready.set()
        return True

    def check_channel_shell_request(self, channel: paramiko.Channel) -> bool:
        if self.command is not None:
            return False
        self.command = b""
        self.ready.set()
        return True

    def _refuse(self, what: str) -> bool:
        notice = f"opus: {what} refused: Opus serves git and opus commands only"
        if notice not in self.notices:   # once per kind, however often it is asked
            log.info("[%s] refused %s", self.request_id, what)
            self.notices.append(notice)
        return False

    def check_channel_pty_request(self, channel: paramiko.Channel, term: bytes, width: int,
                                  height: int, pixelwidth: int, pixelheight: int,
                                  modes: bytes) -> bool:
        """Granted, but only `opus run` gets a terminal; everything else is told so."""
        self.pty = (max(1, min(width, 1000)), max(1, min(height, 1000)),
                    privileged.terminal_type(term))
        return True

    def check_channel_env_request(self, channel: paramiko.Channel, name: bytes,
                                  value: bytes) -> bool:
        if name in QUIET_ENV:
            return False
        return self._refuse("environment variable")

    def check_channel_forward_agent_request(self, channel: paramiko.Channel) -> bool:
        return self._refuse("agent forwarding")

    def check_channel_x11_request(self, *args: object) -> bool:
        return self._refuse("X11 forwarding")

    def check_channel_subsystem_request(self, channel: paramiko.Channel, name: str) -> bool:
        log.info("[%s] refused subsystem %r", self.request_id, name[:40])
        return False

    def check_port_forward_request(self, address: str, port: int) -> bool:
        log.info("[%s] refused port forwarding", self.request_id)
        return False

    def check_global_request(self, kind: str, msg: paramiko.Message) -> bool:
        return False


def serve_git(server: Server, user: User, verb: str, app_name: str,
              channel: paramiko.Channel, cancelled: threading.Event, request_id: str) -> int:
    return serve_git_as(server.settings, server.store, user, verb, app_name, channel,
                        cancelled, request_id)


def serve_git_as(settings: Settings, store: Store, user: User, verb: str, app_name: str,
                 channel: paramiko.Channel, cancelled: threading.Event,
                 request_id: str) -> int:
    """Serve one git request as `user` on `channel` (an SSH channel, or standard input
    and output for a push made on the host: opus_paas.builder.receive)."""
    reader = ChannelReader(channel, settings.ssh_read_timeout)
    proto = Protocol(reader.read, channel.sendall)
    backend = gitserver.OpusBackend(settings.repos_dir)
    repo_arg = f"/{app_name}.git"
    handler: gitserver.DeployingReceivePackHandler | gitserver.PackObjectsUploadPackHandler
    if verb == "git-upload-pack":
        access.app_for(store, Actor(user), app_name)
        handler = gitserver.PackObjectsUploadPackHandler(backend, [repo_arg], proto,
                                                         settings=settings)
        gitserver.handle_and_close(handler)
        return 0

    access.app_or_creatable(settings, store, Actor(user), app_name)

    def say_waiting() -> None:
        channel.sendall_stderr(
            f"remote: waiting for the deploy of {app_name} to finish…\n".encode())

    with locks.app_lock(settings, app_name, on_wait=say_waiting, cancelled=cancelled) as held:
        app, created = apps.open_for_push(settings, store, user, app_name)
        try:
            recovery.recover_app(settings, store, app.name)
            # A sleeping app serves again while its push builds (its deploy would start
            # it anyway; requests meanwhile would wait for this lock).
            sleep.wake_quietly(settings, store, app, lambda line: channel.sendall_stderr(
                f"remote: {line}\n".encode()))
            handler = gitserver.DeployingReceivePackHandler(
                backend, [repo_arg], proto, settings=settings, store=store, app=app,
                reader=reader, cancelled=cancelled, request_id=request_id)
            gitserver.handle_and_close(handler)
        finally:
            if created:
                apps.forget_if_unused(settings, store, app)
        if handler.deployed:
            # The client has its answer once traffic has switched; the old instance is
            # drained and stopped after, still under the app's lock.
            held.hand_off(functools.partial(_finish_deploys, handler.deployed))
    return 0


def _finish_deploys(deployed: list[push.Deployed]) -> None:
    for one in deployed:
        one.finish()


def serve_command(server: Server, user: User, command: bytes, channel: paramiko.Channel,
                  cancelled: threading.Event, request_id: str,
                  pty: tuple[int, int, str] | None = None) -> int:
    """Run one exec request on `channel`; return the exit status."""
    try:
        text = command.decode("utf-8")
    except UnicodeDecodeError:
        text = "\0"
    if not text:
        channel.sendall_stderr(
            f"Hi {user.name}! You are authenticated, but Opus gives no shell. "
            "Push with: git push opus main\n".encode())
        return 1
    if pty is not None and (text.split(maxsplit=1) or [''])[0] not in TERMINAL_COMMANDS:
        channel.sendall_stderr(b"opus: a terminal is given to `opus run` and `opus pg:psql` "
                               b"only; going on without one\n")
    match = GIT_COMMAND.fullmatch(text)
    if match:
        verb, path = match.groups()
        return serve_git(server, user, verb, names.app_from_repo_path(path), channel,
                         cancelled, request_id)
    return serve_opus_command(server, user, text, channel, cancelled, pty)


def serve_opus_command(server: Server, user: User, text: str, channel: paramiko.Channel,
                       cancelled: threading.Event, pty: tuple[int, int, str] | None = None) -> int:
    """`ssh git@host CMD ARGS…`: the same command table as the host's `opus`, as `user`."""
    try:
        argv = shlex.split(text)
    except ValueError:
        raise UsageError("the command line has an unclosed quote") from None
    if len(text) > MAX_COMMAND_CHARS:
        raise UsageError(f"the command line is longer than {MAX_COMMAND_CHARS} characters")

    # On a client's terminal (raw mode) a bare newline does not return the carriage.
    newline = "\r\n" if pty else "\n"

    def out(line: str) -> None:
        channel.sendall((line.replace("\n", newline) + newline).encode("utf-8", "replace"))

    def read_stdin(limit: int) -> str:
        data = b""
        while len(data) <= limit:
            chunk = channel.recv(min(65536, limit + 1 - len(data)))
            if not chunk:
                break
            data += chunk
        if len(data) > limit:
            raise UsageError(f"standard input is longer than {limit} bytes")
        return data.decode("utf-8", "replace")

    terminal = None
    if pty is not None and argv[:1] and argv[0] in TERMINAL_COMMANDS:
        terminal = privileged.Terminal(pty[0], pty[1], _input_reader(channel), channel.sendall,
                                       pty[2])
    return commands.run(Context(server.settings, Actor(user), out, read_stdin,
                                         remote=True, cancelled=cancelled,
                                         terminal=terminal, write_bytes=channel.sendall),
                        argv)


def _input_reader(channel: paramiko.Channel) -> Callable[[], bytes]:
    """Keystrokes from the client; an idle terminal is not a stalled client."""
    def read() -> bytes:
        while True:
            try:
                return bytes(channel.recv(4096))
            except TimeoutError:
                if channel.closed:
                    return b""
    return read


def _watch(transport: paramiko.Transport, channel: paramiko.Channel,
           cancelled: threading.Event, done: threading.Event, deadline: float) -> None:
    """Set `cancelled` when the client goes away, so a running build stops; past the
    session's deadline, close the connection (a client trickling bytes, or one that
    stopped reading its socket, would otherwise hold a thread and a lock for ever)."""
    while not done.wait(DISCONNECT_POLL_SECONDS):
        if not transport.is_active() or channel.closed:
            cancelled.set()
            return
        if time.monotonic() > deadline:
            log.info("session deadline passed; closing the connection")
            cancelled.set()
            transport.close()
            return


def run_exec(server: Server, session: Session, transport: paramiko.Transport,
             channel: paramiko.Channel, request_id: str) -> tuple[int, str]:
    """Serve the session's one command; return (exit status, outcome for the log)."""
    assert session.user is not None and session.command is not None
    settings = server.settings
    pairs = redact.replacements(settings)
    channel.settimeout(settings.ssh_read_timeout)   # no write may wait for ever either
    cancelled, done = threading.Event(), threading.Event()
    watcher = threading.Thread(
        target=_watch, args=(transport, channel, cancelled, done,
                             time.monotonic() + settings.ssh_session_timeout), daemon=True)
    watcher.start()
    try:
        for notice in session.notices:
            channel.sendall_stderr((notice + "\n").encode())
        status = serve_command(server, session.user, session.command, channel,
                               cancelled, request_id, session.pty)
        return status, "ok" if status == 0 else "refused"
    except OpusError as exc:
        message = " ".join(redact.redact(exc.message, pairs).split())
        _say(channel, f"opus: {message}")
        return exc.exit_code, f"{exc.__class__.__name__}: {message}"
    except HangupException:
        return 1, "client hung up"
    except GitProtocolError as exc:
        log.info("[%s] protocol error: %s", request_id, exc)
        _say(channel, "opus: the client broke the git protocol; nothing was changed; "
                      "use a current git")
        return 1, "protocol error"
    except Exception as exc:
        full = disk_full(exc)
        if full is not None:
            log.warning("[%s] %s", request_id, exc)
            _say(channel, f"opus: {full.message}")
            return full.exit_code, "disk full"
        log.exception("[%s] command failed", request_id)
        _say(channel, f"opus: internal error (request {request_id}); the operator's log "
                      "has the details")
        return 1, "internal error"
    finally:
        done.set()
        watcher.join()


def _say(channel: paramiko.Channel, line: str) -> None:
    with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
        channel.sendall_stderr((line + "\n").encode("utf-8", "replace"))


def log_in(transport: paramiko.Transport, session: Session,
           deadline: float) -> paramiko.Channel | None:
    """The session channel of a client that logged in (banner, key exchange, public-key
    authentication, the channel opened) by `deadline`; None if it did not."""
    negotiated = threading.Event()
    transport.start_server(event=negotiated, server=session)
    while transport.is_active() and time.monotonic() < deadline:
        if negotiated.wait(DISCONNECT_POLL_SECONDS):
            channel = transport.accept(DISCONNECT_POLL_SECONDS)
            if channel is not None:
                return channel
    return None


def handle_connection(server: Server, sock: socket.socket, admission: Admission) -> None:
    settings = server.settings
    request_id = uuid.uuid4().hex[:8]
    started = time.monotonic()
    transport = paramiko.Transport(sock)
    transport.banner_timeout = transport.handshake_timeout = settings.ssh_login_timeout
    transport.auth_timeout = settings.ssh_login_timeout
    session = Session(server.store, request_id)
    status, outcome = 255, "no command"
    user_slot = None
    try:
        transport.add_server_key(server.host_key)
        channel = log_in(transport, session, started + settings.ssh_login_timeout)
        if channel is None or session.user is None:
            if transport.is_active():
                log.info("[%s] no login from %s within %.0f s; closed", request_id,
                         admission.source, settings.ssh_login_timeout)
            return
        if server.users.acquire(session.user.name):
            user_slot = session.user.name
            admission.release()
        if not session.ready.wait(settings.ssh_idle_timeout):
            _say(channel, f"opus: no command within {settings.ssh_idle_timeout:.0f} s; "
                          "closing the connection")
            channel.close()
            return
        if user_slot is None:
            status, outcome = Conflict.exit_code, "too many connections for the user"
            _say(channel, f"opus: too many connections for {session.user.name} at once, "
                          f"all keys together (limit {settings.ssh_connections_per_user}); "
                          "wait for one to finish and try again")
        else:
            status, outcome = run_exec(server, session, transport, channel, request_id)
        with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
            channel.send_exit_status(status)
            channel.shutdown_write()
            channel.close()
        # Let the client hang up first: closing the socket while its last packets are
        # unread makes the kernel reset the connection, and the client can lose the
        # message it was sent.
        deadline = time.monotonic() + CLIENT_CLOSE_WAIT_SECONDS
        while transport.is_active() and time.monotonic() < deadline:
            time.sleep(0.02)
    except (paramiko.SSHException, EOFError, OSError) as exc:
        outcome = f"connection ended: {exc.__class__.__name__}"
    finally:
        transport.close()
        if user_slot is not None:
            server.users.release(user_slot)
        if session.user is not None:
            # Values that may be secrets (config values, SQL, passwords) are not logged.
            log.info("[%s] user=%s key=%s command=%r status=%d outcome=%s seconds=%.1f",
                     request_id, session.user.name, session.fingerprint,
                     redact.logged_command((session.command or b"").decode("utf-8", "replace")),
                     status, outcome,
                     time.monotonic() - started)


def remove_leftovers(settings: Settings) -> None:
    """What a server stopped mid-push leaves behind: quarantined packs, half-made
    repositories, ref lock files. Only one SSH server runs, so at its start nothing
    else is using them."""
    if not settings.repos_dir.is_dir():
        return
    for entry in settings.repos_dir.iterdir():
        if entry.name.startswith(".") and entry.name.endswith(".git.new"):
            shutil.rmtree(entry, ignore_errors=True)
        elif entry.is_dir() and not entry.is_symlink():
            removed = packs.remove_leftovers(entry)
            for lock in [*entry.glob("refs/**/*.lock"), *entry.glob("*.lock")]:
                lock.unlink(missing_ok=True)
                removed.append(lock)
            if removed:
                log.info("removed leftovers of an interrupted push in %s: %s",
                         entry.name, ", ".join(p.name for p in removed))


def serve(settings: Settings) -> None:
    """Listen and serve forever, one thread per connection, at most
    ssh_max_connections at once."""
    store = Store(settings.db_path)
    store.init()
    remove_leftovers(settings)
    server = Server(settings, store, load_or_create_host_key(settings.host_key_path),
                    UserLimiter(settings.ssh_connections_per_user),
                    SourceLimiter(settings.ssh_unauthenticated_per_source))
    slots = threading.BoundedSemaphore(settings.ssh_max_connections)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((settings.ssh_host, settings.ssh_port))
    listener.listen(64)
    log.info("listening on %s:%d", settings.ssh_host, settings.ssh_port)
    # A deploy this server was running when it was killed is ended now, not at the
    # next `opus up` (apps whose lock another process holds are left to it).
    threading.Thread(target=_recover, args=(settings, server.store), daemon=True).start()

    def serve_one(sock: socket.socket, admission: Admission) -> None:
        try:
            handle_connection(server, sock, admission)
        finally:
            admission.release()
            slots.release()

    while True:
        try:
            sock, addr = listener.accept()
        except OSError as exc:   # out of descriptors, say: wait, never die
            log.warning("accept failed (%s); retrying in 1 s", exc)
            time.sleep(1)
            continue
        if not server.sources.admit(addr[0]):
            refuse(sock, "opus: too many connections from your address are logging in; "
                         "try again later")
            continue
        admission = Admission(server.sources, addr[0])
        if not slots.acquire(blocking=False):
            log.warning("%d connections open; dropped a new one",
                        settings.ssh_max_connections)
            admission.release()
            sock.close()
            continue
        try:
            threading.Thread(target=serve_one, args=(sock, admission), daemon=True).start()
        except RuntimeError:   # no thread to be had
            sock.close()
            admission.release()
            slots.release()


def refuse(sock: socket.socket, line: str) -> None:
    """Close a connection before any SSH is spoken, with one line before the protocol
    banner (RFC 4253 4.2 lets a server send such lines) for a human to read."""
    with contextlib.suppress(OSError):
        sock.setblocking(False)
        sock.send((line + "\r\n").encode())
        sock.shutdown(socket.SHUT_WR)
    sock.close()


def _recover(settings: Settings, store: Store) -> None:
    try:
        for line in recovery.recover_all(settings, store):
            log.info("recovery: %s", line)
    except Exception:
        log.exception("recovery at start failed; `opus up` or the scheduler tries again")


def _stop(signum: int, frame: object) -> None:
    """supervisord stops us with SIGTERM: no build may outlive the server."""
    privileged.kill_running_steps()
    raise SystemExit(0)


def main() -> None:
    logging.basicConfig(stream=sys.stdout, level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # paramiko logs every port probe and dropped handshake as an error with a traceback;
    # each connection's outcome is logged here instead.
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)
    signal.signal(signal.SIGTERM, _stop)
    serve(settings_module.load())


if __name__ == "__main__":
    main()
