"""The `opus` entry point: the command table's local edge."""

from __future__ import annotations

import sys

from opus_paas import commands
from opus_paas import settings as settings_module
from opus_paas.errors import OpusError


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        settings = settings_module.load()
        commands.run(commands.local_context(settings), args)
    except OpusError as exc:
        print(f"opus: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
