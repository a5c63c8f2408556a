"""The SSH server: public-key auth, one strict pattern per command, git over dulwich.

Identity comes from the key, never from the client. Run as `python -m opus_paas.sshd`.
"""

from __future__ import annotations

import logging
import re
import socket
import sys
import threading
import time
import uuid
from pathlib import Path

import paramiko
from dulwich.protocol import Protocol
from dulwich.repo import Repo
from dulwich.server import ReceivePackHandler, UploadPackHandler
from paramiko.common import (
    AUTH_FAILED,
    AUTH_SUCCESSFUL,
    OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED,
    OPEN_SUCCEEDED,
)

from opus_paas import gitserver, keys, names, push
from opus_paas import settings as settings_module
from opus_paas.errors import NotFound, OpusError
from opus_paas.settings import Settings
from opus_paas.store import App, Store, User

log = logging.getLogger("opus.sshd")

GIT_COMMAND = re.compile(r"(git-receive-pack|git-upload-pack) '([^'\\\n]{1,200})'")
EXEC_WAIT_SECONDS = 15
CLIENT_CLOSE_WAIT_SECONDS = 5


def load_or_create_host_key(path: Path) -> paramiko.PKey:
    """The server's host key: generated once, then kept (clients pin it)."""
    if path.exists():
        return paramiko.ECDSAKey(filename=str(path))
    key = paramiko.ECDSAKey.generate(bits=256)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    key.write_private_key_file(str(tmp))
    tmp.chmod(0o600)
    tmp.replace(path)
    return key


class Session(paramiko.ServerInterface):
    """One connection's auth and channel requests."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.user: User | None = None
        self.command: bytes | None = None
        self.ready = threading.Event()

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        user = self.store.user_for_key(keys.fingerprint(key.asbytes()))
        if user is None:
            return AUTH_FAILED
        self.user = user
        return AUTH_SUCCESSFUL

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            return OPEN_SUCCEEDED
        return OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        if self.command is not None:
            return False
        self.command = command
        self.ready.set()
        return True

    def check_channel_shell_request(self, channel: paramiko.Channel) -> bool:
        self.command = b""
        self.ready.set()
        return True

    def check_channel_pty_request(self, *args: object) -> bool:
        return True


def authorize(store: Store, settings: Settings, user: User, app_name: str,
              for_push: bool) -> App:
    """The app, if `user` may use it; a push to a new name creates it.

    A stranger's app and a missing one get the same answer (no existence leak).
    """
    app = store.get_app(app_name)
    if app is None and for_push:
        app = push.create_app(settings, store, app_name, user)
        gitserver.init_repo(settings, app_name)
        return app
    if app is None or not (user.is_admin or app.owner == user.name):
        raise NotFound(f"app {app_name} not found, or you may not use it")
    gitserver.init_repo(settings, app.name)
    return app


def serve_command(settings: Settings, store: Store, user: User, command: bytes,
                  channel: paramiko.Channel) -> int:
    """Run one exec request on `channel`; return the exit status."""
    try:
        text = command.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    if not text:
        channel.sendall_stderr(
            f"Hi {user.name}! You are authenticated, but Opus gives no shell. "
            "Push with: git push opus main\n".encode())
        return 1
    match = GIT_COMMAND.fullmatch(text)
    if not match:
        channel.sendall_stderr(b"opus: unknown command; only git push and git clone/fetch "
                               b"are served over SSH\n")
        return 1
    verb, path = match.groups()
    app_name = names.app_from_repo_path(path)
    app = authorize(store, settings, user, app_name, for_push=verb == "git-receive-pack")
    rfile = channel.makefile("rb", -1)
    proto = Protocol(rfile.read, channel.sendall)
    backend = gitserver.OpusBackend(settings.repos_dir)
    repo_arg = f"/{app.name}.git"
    handler: ReceivePackHandler | UploadPackHandler
    if verb == "git-receive-pack":
        handler = gitserver.DeployingReceivePackHandler(
            backend, [repo_arg], proto, settings=settings, store=store, app=app)
    else:
        handler = UploadPackHandler(backend, [repo_arg], proto)
    try:
        handler.handle()
    finally:
        if isinstance(handler.repo, Repo):
            handler.repo.close()
    return 0


def handle_connection(settings: Settings, store: Store, host_key: paramiko.PKey,
                      sock: socket.socket) -> None:
    request_id = uuid.uuid4().hex[:8]
    transport = paramiko.Transport(sock)
    try:
        transport.add_server_key(host_key)
        session = Session(store)
        transport.start_server(server=session)
        channel = transport.accept(EXEC_WAIT_SECONDS)
        if channel is None or not session.ready.wait(EXEC_WAIT_SECONDS):
            return
        assert session.user is not None and session.command is not None
        log.info("[%s] %s: %r", request_id, session.user.name, session.command[:200])
        try:
            status = serve_command(settings, store, session.user, session.command, channel)
        except OpusError as exc:
            channel.sendall_stderr(f"opus: {exc.message}\n".encode("utf-8", "replace"))
            status = exc.exit_code
        except Exception:
            log.exception("[%s] command failed", request_id)
            channel.sendall_stderr(
                f"opus: internal error (request {request_id}); nothing was changed\n".encode())
            status = 1
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
        log.info("[%s] connection ended: %s", request_id, exc.__class__.__name__)
    finally:
        transport.close()


def serve(settings: Settings) -> None:
    """Listen and serve forever, one thread per connection."""
    store = Store(settings.db_path)
    store.init()
    host_key = load_or_create_host_key(settings.host_key_path)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((settings.ssh_host, settings.ssh_port))
    listener.listen(64)
    log.info("listening on %s:%d", settings.ssh_host, settings.ssh_port)
    while True:
        sock, _addr = listener.accept()
        threading.Thread(target=handle_connection, args=(settings, store, host_key, sock),
                         daemon=True).start()


def main() -> None:
    logging.basicConfig(stream=sys.stdout, level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("paramiko").setLevel(logging.WARNING)
    serve(settings_module.load())


if __name__ == "__main__":
    main()
