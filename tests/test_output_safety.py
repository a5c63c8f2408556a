"""What an app or its build prints reaches users' terminals (`opus logs`,
`builds:output`, a push): never as terminal control, and a build that prints without
end fills neither the disk nor `builds:output`'s memory."""

from __future__ import annotations

import re
import shlex
import subprocess
import time
from pathlib import Path

from tests.conftest import BUILD_LOG_LIMIT, Opus, SshKey, commit_all, git, push_main

APP = "hostileout"
# OSC 52 (write the clipboard), OSC 0 (set the title), CSI clear and move, a C1 CSI
# written as its UTF-8 code point, a bare 8-bit byte; then text that must stay as it is.
HOSTILE_SH = r"\033]52;c;cHduZWQ=\007 \033]0;owned\007 \033[2J\033[1;1H \302\23331m \233 "
HOSTILE_PY = "\\x1b]52;c;cHduZWQ=\\x07 \\x1b]0;owned\\x07 \\x1b[2J\\x1b[1;1H \\x9b31m "
KEPT = "tab\there é ✓"
KEPT_PY = "tab\\there é ✓"
SHOWN = r"\x1b]52;c;cHduZWQ=\x07 \x1b]0;owned\x07 \x1b[2J\x1b[1;1H \x9b31m "
FILLER_LINES = 2000      # of 208 bytes: well past the test Opus's BUILD_LOG_LIMIT
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")

PRE_COMPILE = f"""#!/bin/bash
printf 'build says {HOSTILE_SH}{KEPT}\\n'
yes "filler $(printf '%0200d' 0)" | head -n {FILLER_LINES}
echo "last of the build's own lines"
"""
WEB = f"""import http.server, os
print("app says {HOSTILE_PY}{KEPT_PY}", flush=True)
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])),
                                http.server.SimpleHTTPRequestHandler).serve_forever()
"""


def ssh(opus: Opus, key: SshKey, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ssh", "-i", str(key.private), "-o", "IdentitiesOnly=yes",
         "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", "-p", str(opus.ssh_port),
         "git@127.0.0.1", shlex.join(argv)],
        capture_output=True, text=True, timeout=60, check=False)


def test_hostile_output_is_shown_inert_and_a_flooding_build_log_is_capped(
        opus: Opus, admin_key: SshKey, tmp_path: Path) -> None:
    project = tmp_path / APP
    (project / "bin").mkdir(parents=True)
    (project / "requirements.txt").write_text("six==1.16.0\n")
    (project / "Procfile").write_text("web: python web.py\n")
    (project / "web.py").write_text(WEB)
    (project / "bin" / "pre_compile").write_text(PRE_COMPILE)
    git(project, "init", "-q", "-b", "main")
    commit_all(project, "prints what it should not")
    git(project, "remote", "add", "opus", f"ssh://git@127.0.0.1:{opus.ssh_port}/{APP}.git")
    pushed = push_main(project, opus, admin_key)
    assert f"build says {SHOWN}" in pushed and "\x1b" not in pushed

    # The log holds the start of the output, one line saying where the rest went and
    # where the limit is set, and the end (the client saw it all live).
    log = opus.home / "builds" / APP / "build-v1.log"
    assert BUILD_LOG_LIMIT < log.stat().st_size < BUILD_LOG_LIMIT + (70 << 10)
    output = ssh(opus, admin_key, "builds:output", APP)
    assert output.returncode == 0, output.stderr
    assert f"build says {SHOWN}\ufffd {KEPT}" in output.stdout   # (a bare 8-bit byte)
    assert not CONTROL.search(output.stdout.replace("\n", "").replace("\t", ""))
    assert output.stdout.count("filler") < FILLER_LINES
    assert "Build output past 262144 bytes is left out of this log" in output.stdout
    assert "OPUS_BUILD_LOG_LIMIT" in output.stdout
    assert "last of the build's own lines" in output.stdout
    assert "-----> Released v1" in output.stdout
    last = ssh(opus, admin_key, "builds:output", APP, "-n", "12").stdout.splitlines()
    assert len(last) == 12 and any(line.startswith("-----> Released v1") for line in last)
    bad = ssh(opus, admin_key, "builds:output", APP, "-n", "many")
    assert bad.returncode != 0 and "-n needs a number of lines" in bad.stderr

    # The app's own output, in `opus logs`.
    deadline = time.monotonic() + 20
    while "app says" not in (shown := ssh(opus, admin_key, "logs", APP, "-n", "50").stdout):
        assert time.monotonic() < deadline, shown
        time.sleep(0.3)
    assert f"app says {SHOWN}{KEPT}" in shown
    assert not CONTROL.search(shown.replace("\n", "").replace("\t", ""))
    opus.cli("apps:destroy", APP, "--confirm", APP)
