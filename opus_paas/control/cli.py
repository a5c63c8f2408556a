"""The `opus` entry point: the command table's local edge, or client mode over SSH."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from opus_paas import settings as settings_module
from opus_paas.control import client, commands, system
from opus_paas.errors import OpusError, disk_full

# What root runs itself in system mode; every other command runs as the opus user.
ROOT_COMMANDS = (["install"], ["uninstall"], ["up"], ["down"], ["status"])


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        args, remote_name = client.take_remote_option(system.handed_over_argv(args))
        settings = settings_module.load()
        if args[:1] == ["init"]:
            # It writes a project where it is typed, as whoever types it: never over
            # SSH, never handed to the opus user.
            return commands.run(commands.local_context(settings), args)
        host_only = bool(args) and args[0] in commands.TABLE and \
            commands.TABLE[args[0]].local_only
        if settings.system and os.geteuid() == 0 and args[:1] not in ROOT_COMMANDS:
            # What Opus writes must stay the opus user's: root's commands run as it.
            return system.as_system_user(settings, args)
        if args[:1] != ["install"]:
            settings_module.check_root_home(settings)
        if not host_only:
            remote = client.find_remote(remote_name, Path.cwd(),
                                        local_opus=settings.db_path.exists())
            if remote is not None:
                return client.run(remote, args)
        return commands.run(commands.local_context(settings), args)
    except OpusError as exc:
        print(f"opus: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:   # `opus logs APP | head`
        return 0
    except Exception as exc:   # a bug: one line, not a traceback
        full = disk_full(exc)
        if full is not None:
            print(f"opus: {full.message}", file=sys.stderr)
            return full.exit_code
        print(f"opus: internal error ({exc.__class__.__name__}); please report it with the "
              "command you ran", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
