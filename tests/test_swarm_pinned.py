"""A pinned app's data moves with it (docs/scale-out.md, Pinned data), end to end: a
real Opus with its registry, one real dockerd node added with `opus nodes:add` over real
SSH (tests/swarm_nodes.py), real `git push`es of the tests' Django fixture on SQLite
(each request records a visit in data/db.sqlite3). On this host first; then
`scheduler:set swarm` + `ps:restart`: the app stops here, data/ moves into its volume on
the node, the app serves there with the visits it had; a push whose migration runs as a
one-off task on the node, next to the data (this host's copy never sees it); a push
whose migration fails is rejected and the live release keeps serving; `nodes:remove` of
the node holding the data is refused (and `apps:rename`, `opus run`, `backups:capture`,
which would act on this host's stale copy, say why); the move back, by a push with a
migration, brings the data home first and migrates it here."""
from __future__ import annotations

import os
import re
import sqlite3
import time
from pathlib import Path

from opus_paas import settings as settings_module
from opus_paas.layout import AppPaths
from opus_paas.run import programs
from opus_paas.settings import Settings
from opus_paas.store import Store
from opus_paas.supervisor import Supervisor
from opus_paas.swarm import registry
from opus_paas.tls import private_ca
from tests.conftest import (
    Opus,
    SshKey,
    commit_all,
    free_port,
    git,
    make_django_project,
    make_key,
    require_root,
    require_tool,
    start_opus,
    stop_opus,
    wait_for_deploy,
)
from tests.swarm_nodes import DOCKER, DOCKERD, SSHD, swarm_nodes

APP = "notes"
# A visit is recorded by /?visit=1 only (the health checks ask for /).
VIEWS = '''\
from django.http import HttpResponse

from .models import Visit


def index(request):
    if "visit" in request.GET:
        Visit.objects.create(path=request.path)
    return HttpResponse("visits: %d" % Visit.objects.count())
'''
VIEWS_NOTES = '''\
from django.http import HttpResponse

from .models import Note, Visit


def index(request):
    if "visit" in request.GET:
        Visit.objects.create(path=request.path)
    return HttpResponse("visits: %d, notes: %d" % (Visit.objects.count(), Note.objects.count()))
'''
MODELS_ADDED = '''

class Note(models.Model):
    text = models.CharField(max_length=200)
'''
MIGRATION = '''\
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("pages", "0001_initial")]
    operations = [
        migrations.CreateModel(name="Note", fields=[
            ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False,
                                       verbose_name="ID")),
            ("text", models.CharField(max_length=200)),
        ]),
    ]
'''
TAG_MODEL = '''

class Tag(models.Model):
    name = models.CharField(max_length=50)
'''
TAG_MIGRATION = MIGRATION.replace('"0001_initial"', '"0002_note"').replace(
    '"Note"', '"Tag"').replace('"text", models.CharField(max_length=200)',
                             '"name", models.CharField(max_length=50)')
FAILING_MIGRATION = '''\
from django.db import migrations


def fail(apps, schema_editor):
    raise RuntimeError("this migration fails on purpose")


class Migration(migrations.Migration):
    dependencies = [("pages", "0002_note")]
    operations = [migrations.RunPython(fail)]
'''


def _get(opus: Opus) -> str:
    """A visit: the app records it and answers with the count."""
    status, _headers, body = opus.get(opus.app_host(APP), "/?visit=1")
    assert status == 200, (status, body[:400])
    return body


def _push(opus: Opus, key: SshKey, project: Path, *, ok: bool = True) -> str:
    result = git(project, "push", "opus", "main", env=key.git_env(opus), check=False)
    out = result.stdout + result.stderr
    assert (result.returncode == 0) == ok, out
    wait_for_deploy(opus.home, APP)
    return out


def _local_programs(settings: Settings) -> list[str]:
    """The app's supervisor programs on this host."""
    return [str(p["name"]) for p in Supervisor(settings).processes()
            if (programs.program_owner(str(p["group"])) or ("",))[0] == APP]


def _tables(db: Path) -> set[str]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def test_a_pinned_apps_data_moves_to_its_node_migrates_there_and_comes_back(
        tmp_path: Path) -> None:
    require_root("the swarm node needs network and mount namespaces")
    for tool in (DOCKERD, DOCKER, SSHD, registry.BINARY, "ip", "nsenter", "unshare"):
        require_tool(tool)
    with swarm_nodes(1, offline_images=False) as swarm:
        node = swarm.manager
        opus = start_opus(OPUS_SWARM_MANAGER=str(node.socket),
                          OPUS_SWARM_REGISTRY=f"{swarm.gateway}:{free_port()}",
                          OPUS_SWARM_DEPLOY_TIMEOUT="60")
        settings = settings_module.load(opus.env)
        store = Store(settings.db_path)
        try:
            # The node, added as an operator does: Opus's key let in, then nodes:add.
            node.start_sshd(opus.cli("nodes:key").stdout.strip())
            out = opus.cli("nodes:add", node.address).stdout
            assert "node1" in out, out
            # It trusts Opus's registry (TLS, Opus's CA), as nodes:add sets it up.
            trusted = node.root / "etc-docker" / "certs.d" / settings.swarm_registry / "ca.crt"
            assert trusted.read_bytes() == private_ca.ca_cert_path(settings).read_bytes()
            key = make_key(tmp_path, "admin")
            opus.cli("keys:add", "admin", str(key.public))
            project = make_django_project(tmp_path / "project")
            (project / "pages" / "views.py").write_text(VIEWS)
            commit_all(project, "visits")
            git(project, "remote", "add", "opus",
                f"ssh://git@127.0.0.1:{opus.ssh_port}/{APP}.git")
            opus.cli("apps:create", APP)

            # 0. On this host, on SQLite in data/: two visits.
            _push(opus, key, project)
            assert _get(opus) == "visits: 1" and _get(opus) == "visits: 2"
            data = AppPaths.of(settings, APP).data
            media = data / "media"
            media.mkdir()
            (media / "hello.txt").write_text("uploaded here")
            (data / "elsewhere").symlink_to("/etc/hostname")
            owner = data.stat()        # the app's files are its run user's
            for path in (media, media / "hello.txt", data / "elsewhere"):
                os.chown(path, owner.st_uid, owner.st_gid, follow_symlinks=False)
            app = store.get_app(APP)
            assert app is not None

            # 1. To the swarm: pinned to node1 by SQLite; the app stops here, data/ moves
            # into its volume there (the link is left out, and said); it serves there
            # with its visits, from the node's copy.
            out = opus.cli("scheduler:set", APP, "swarm").stdout
            assert "notes uses SQLite (db.sqlite3 in data/): it stays on node node1" in out, out
            started = time.monotonic()
            out = opus.cli("ps:restart", APP).stdout
            moved_in = time.monotonic() - started
            assert "notes stops on this host while its data/ moves to node1" in out, out
            assert re.search(r"Moving data/ to node1 \([\d.]+ MB\)", out), out
            assert "skipped elsewhere: not a directory or a regular file" in out, out
            assert "Healthy: node1:" in out, out
            assert _local_programs(settings) == []
            assert _get(opus) == "visits: 3"
            assert store.swarm_data_node(app) == "node1"
            assert opus.cli("scheduler", APP).stdout.strip() == "swarm (its data on node node1)"
            volume = node.docker("volume", "inspect", "--format", "{{.Mountpoint}}",
                                 "opus-data-notes").stdout.strip()
            assert volume, "no volume on node1"
            uid = settings.swarm_uid_base + app.id
            on_node = node.docker("run", "--rm", "--user", f"{uid}:{uid}", "--entrypoint",
                                  "/usr/bin/python3", "-v", "opus-data-notes:/data",
                                  store.swarm_releases(app)[0].image, "-I", "-c",
                                  "import os;print(sorted(os.listdir('/data')));"
                                  "print(open('/data/media/hello.txt').read())").stdout
            assert "'db.sqlite3'" in on_node and "'elsewhere'" not in on_node, on_node
            assert "uploaded here" in on_node, on_node

            # 2. A push with a migration: the release command runs on node1 as a one-off
            # task, next to the data; this host's copy of data/ never sees it.
            (project / "pages" / "models.py").write_text(
                (project / "pages" / "models.py").read_text() + MODELS_ADDED)
            (project / "pages" / "migrations" / "0002_note.py").write_text(MIGRATION)
            (project / "pages" / "views.py").write_text(VIEWS_NOTES)
            commit_all(project, "notes")
            out = _push(opus, key, project)
            assert "Running release command on the swarm: python manage.py migrate" in out, out
            assert "Applying pages.0002_note... OK" in out, out
            assert "Running release command: " not in out, out     # (not on this host)
            assert _get(opus) == "visits: 4, notes: 0"
            assert "pages_note" not in _tables(data / "db.sqlite3")
            assert not node.docker("service", "ls", "-q", "--filter",
                                   "name=notes-release").stdout.strip()

            # 3. A migration that fails on the node rejects the push; v-live keeps serving.
            (project / "pages" / "migrations" / "0003_fail.py").write_text(FAILING_MIGRATION)
            commit_all(project, "fails")
            live = store.get_app(APP)
            assert live is not None
            out = _push(opus, key, project, ok=False)
            assert "this migration fails on purpose" in out, out
            assert "the release command failed on the swarm (exit status 1)" in out, out
            assert _get(opus) == "visits: 5, notes: 0"
            assert (store.get_app(APP) or live).live_version == live.live_version
            git(project, "rm", "-q", "pages/migrations/0003_fail.py")
            commit_all(project, "no failing migration")

            # 4. The node holding the data cannot be removed from under it, nor the app renamed.
            result = opus.cli("nodes:remove", "node1", check=False)
            assert result.returncode != 0
            assert "node1 holds the data of notes (pinned to it)" in result.stderr, result
            assert "opus scheduler:set notes local" in result.stderr, result
            assert store.list_nodes() != []
            result = opus.cli("apps:rename", APP, "jottings", check=False)
            assert result.returncode != 0
            assert "does not move notes's data on node node1 yet" in result.stderr, result
            # What would act on this host's stale copy says so instead.
            result = opus.cli("run", APP, "--", "python", "manage.py", "check", check=False)
            assert result.returncode != 0 and "`opus run` runs on this host" in result.stderr
            result = opus.cli("backups:capture", APP, check=False)
            assert result.returncode != 0, result
            assert "SQLite database is on node node1" in result.stderr, result

            # 5. Back to this host, by a push with another migration: the tasks stop,
            # the volume comes back as data/ before the backup and the release command,
            # which then run here on the node's data; the app serves here.
            opus.cli("scheduler:set", APP, "local")
            (project / "pages" / "models.py").write_text(
                (project / "pages" / "models.py").read_text() + TAG_MODEL)
            (project / "pages" / "migrations" / "0003_tag.py").write_text(TAG_MIGRATION)
            commit_all(project, "tags")
            started = time.monotonic()
            out = _push(opus, key, project)
            moved_back = time.monotonic() - started
            assert "notes stops on the swarm while its data/ moves back from node1" in out, out
            assert re.search(r"Moving data/ back from node1 \([\d.]+ MB\)", out), out
            assert out.index("Moving data/ back") < out.index("Backed up the database") < \
                out.index("Running release command: python manage.py migrate"), out
            assert "Applying pages.0003_tag... OK" in out, out
            assert "Running release command on the swarm" not in out, out
            assert _get(opus) == "visits: 6, notes: 0"
            assert {"pages_note", "pages_tag"} <= _tables(data / "db.sqlite3")
            assert (media / "hello.txt").read_text() == "uploaded here"
            assert not (data / "elsewhere").exists()
            assert _local_programs(settings) != []
            assert store.swarm_data_node(app) is None
            assert all(not r.services for r in store.swarm_releases(app))
            # The data is here again: nodes:remove and backups work as for any app.
            assert opus.cli("backups:capture", APP).returncode == 0
            print(f"moved in {moved_in:.1f} s, back {moved_back:.1f} s")
        finally:
            stop_opus(opus, remove_in_background=True)

