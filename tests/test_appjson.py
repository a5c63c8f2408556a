"""app.json read strictly (opus_paas/build/appjson.py) and --from sources checked
(opus_paas/git/sources.py): pure, no I/O but a fake resolver."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from dulwich.repo import Repo

from opus_paas import redact
from opus_paas.build import appjson
from opus_paas.build.appjson import AppJsonError
from opus_paas.control import appfrom
from opus_paas.errors import BuildFailed, Forbidden, UsageError
from opus_paas.git import sources
from opus_paas.run import appsetup
from opus_paas.settings import Settings
from opus_paas.store import App, Store


def parse(document: object) -> appjson.AppJson:
    return appjson.parse(json.dumps(document).encode())


def test_a_heroku_style_app_json_is_read() -> None:
    spec = parse({
        "name": "Shop", "description": "A shop", "repository": "https://example.com/x",
        "keywords": ["django"],
        "env": {"GREETING": "hello", "DJANGO_SECRET": {"generator": "secret"},
                "API_TOKEN": {"description": "the API's token", "required": True},
                "OPTIONAL": {"description": "may stay unset", "required": False},
                "WITH_DEFAULT": {"value": "1", "required": True}},
        "addons": ["heroku-postgresql", {"plan": "heroku-postgresql:essential-0",
                                         "as": "DATABASE"}][:1],
        "scripts": {"postdeploy": "python manage.py loaddata seed", "test": "pytest"},
        "formation": {"web": {"quantity": 2, "size": "basic"}, "worker": {"quantity": 1}},
    })
    assert spec.name == "Shop" and spec.description == "A shop"
    env = {v.name: v for v in spec.env}
    assert env["GREETING"].value == "hello"
    assert env["DJANGO_SECRET"].generate_secret and env["DJANGO_SECRET"].value is None
    assert env["API_TOKEN"].required and env["API_TOKEN"].value is None
    assert not env["OPTIONAL"].required
    assert env["WITH_DEFAULT"].value == "1"
    assert spec.addons == (appjson.Addon("postgres", "heroku-postgresql"),)
    assert spec.postdeploy == "python manage.py loaddata seed"
    assert spec.formation == (("web", 2), ("worker", 1))
    assert "repository is not used by Opus" in spec.notes
    assert "scripts.test is not used by Opus" in spec.notes
    assert "formation.web.size is not used by Opus" in spec.notes


def test_an_empty_object_and_the_addon_forms_are_read() -> None:
    assert parse({}) == appjson.AppJson()
    assert parse({"addons": [{"plan": "postgres"}]}).addons[0].provider == "postgres"
    assert parse({"scripts": {"postdeploy": {"command": "true", "size": "x"}}}
                 ).postdeploy == "true"
    assert appjson.parse(b"\xef\xbb\xbf{}") == appjson.AppJson()    # a BOM


HOSTILE: list[tuple[object, str]] = [
    ([], "the document is a list, not an object"),
    ("x", "the document is a string"),
    (None, "the document is null"),
    ({"__proto__": {}}, "the field '__proto__' is not one of app.json's fields"),
    ({"constructor": {"prototype": 1}}, "the field 'constructor'"),
    ({"env": []}, "env is a list, not an object"),
    ({"env": {"A=B": "x"}}, 'env "A=B" is not a variable name'),
    ({"env": {"A\u0000B": "x"}}, "is not a variable name"),
    ({"env": {"A\nB": "x"}}, 'env "A\\nB" is not a variable name'),
    ({"env": {"1ABC": "x"}}, "is not a variable name"),
    ({"env": {"": "x"}}, 'env "" is not a variable name'),
    ({"env": {"PATH-X": "x"}}, "is not a variable name"),
    ({"env": {"A": 1}}, "env.A is a number, not an object"),
    ({"env": {"A": True}}, "env.A is true/false"),
    ({"env": {"A": "x\u0000y"}}, "env.A contains a NUL character"),
    ({"env": {"A": {"value": 5}}}, "env.A.value is a number, not a string"),
    ({"env": {"A": {"value": "x\u0000"}}}, "env.A.value contains a NUL"),
    ({"env": {"A": {"required": "yes"}}}, "env.A.required is a string; write true or false"),
    ({"env": {"A": {"generator": "uuid"}}}, 'env.A.generator is not "secret"'),
    ({"env": {"A": {"generator": "secret", "value": "v"}}}, "has both a value and a generator"),
    ({"env": {"A": {"__proto__": 1}}}, "env.A.__proto__ is not a field of an env variable"),
    ({"env": {"A": {"description": ["x"]}}}, "env.A.description is a list"),
    ({"env": {"A": "v" * (appjson.MAX_VALUE + 1)}}, "has 32769 characters"),
    ({"env": {f"K{i}": "v" for i in range(appjson.MAX_ENV + 1)}}, "has 201 variables"),
    ({"addons": "heroku-postgresql"}, "addons is a string, not a list"),
    ({"addons": ["heroku-kafka"]}, 'addons[0] ("heroku-kafka") is an add-on Opus does not'),
    ({"addons": ["sendgrid:starter"]}, "Opus provides heroku-postgresql and heroku-redis"),
    ({"addons": [{"plan": "heroku-redis:mini", "as": "DATABASE"}]},
     "names an attachment other than REDIS"),
    ({"addons": [{"plan": "heroku-postgresql", "as": "REDIS"}]},
     "names an attachment other than DATABASE"),
    ({"addons": ["redis", "heroku-redis:mini"]}, "asks for heroku-redis a second"),
    ({"addons": [1]}, "addons[0] is a number, not a string"),
    ({"addons": [{"plan": 1}]}, "addons[0].plan is a number"),
    ({"addons": [{}]}, "addons[0].plan is null"),
    ({"addons": [{"plan": "postgres", "as": "OTHER"}]}, "names an attachment other than"),
    ({"addons": [{"plan": "postgres", "x": 1}]}, "addons[0].x is not a field of an add-on"),
    ({"addons": ["postgres", "heroku-postgresql"]}, "asks for heroku-postgresql a second"),
    ({"addons": ["postgres"] * 11}, "more than 10"),
    ({"scripts": []}, "scripts is a list, not an object"),
    ({"scripts": {"postdeploy": ["a", "b"]}}, "scripts.postdeploy is a list, not a string"),
    ({"scripts": {"postdeploy": 3}}, "scripts.postdeploy is a number"),
    ({"scripts": {"postdeploy": None}}, "scripts.postdeploy is null"),
    ({"scripts": {"postdeploy": ""}}, "scripts.postdeploy is empty"),
    ({"scripts": {"postdeploy": "a\nb"}}, "scripts.postdeploy spans lines"),
    ({"scripts": {"postdeploy": "x" * 5000}}, "has 5000 characters, more than 4096"),
    ({"scripts": {"postdeploy": {"command": "x", "run": 1}}}, "scripts.postdeploy.run"),
    ({"scripts": {"prerun": "x"}}, "scripts.prerun is not a script app.json knows"),
    ({"formation": []}, "formation is a list"),
    ({"formation": {"web": 2}}, "formation.web is a number, not an object"),
    ({"formation": {"web": {"quantity": -1}}}, "formation.web.quantity is -1; give a whole "
                                               "number from 1 to 16"),
    ({"formation": {"web": {"quantity": 0}}}, "formation.web.quantity is 0"),
    ({"formation": {"web": {"quantity": 17}}}, "formation.web.quantity is 17"),
    ({"formation": {"worker": {"quantity": -1}}}, "from 0 to 16"),
    ({"formation": {"web": {"quantity": 2.0}}}, "formation.web.quantity is 2.0"),
    ({"formation": {"web": {"quantity": True}}}, "formation.web.quantity is true"),
    ({"formation": {"web": {"quantity": "2"}}}, "formation.web.quantity is \"2\""),
    ({"formation": {"web": {"quantity": 10**30}}}, "formation.web.quantity is"),
    ({"formation": {"../x": {"quantity": 1}}}, 'formation "../x" is not a process type'),
    ({"formation": {"release": {"quantity": 1}}}, 'formation "release" is not a process'),
    ({"formation": {"web": {"count": 1}}}, "formation.web.count is not known"),
    ({"name": 5}, "name is a number, not a string"),
    ({"name": "n" * 3000}, "name has 3000 characters"),
    ({"description": {"a": 1}}, "description is an object"),
]


@pytest.mark.parametrize(("document", "said"), HOSTILE)
def test_a_hostile_app_json_is_refused_with_the_field_and_a_fix(document: object,
                                                                said: str) -> None:
    with pytest.raises(AppJsonError) as refused:
        parse(document)
    message = refused.value.message
    assert message.startswith("app.json: ") and said in message, message
    assert "; " in message     # what to do follows


RAW: list[tuple[bytes, str]] = [
    (b"{" + b" " * appjson.MAX_BYTES + b"}", "more than the 65536 Opus reads"),
    (b"\xff\xfe{}", "is not UTF-8"),
    (b'{"name": "a\x00"}', "contains a NUL byte"),
    (b'{"name": ', "is not valid JSON (line 1, column 10)"),
    (b"[" * 60000 + b"]" * 60000, "more than the 65536"),
    (b'{"env":' * 5000 + b"1" + b"}" * 5000, "nests too deeply"),
    (b'{"formation": {"web": {"quantity": NaN}}}', "NaN, which JSON does not allow"),
    (b'{"formation": {"web": {"quantity": Infinity}}}', "Infinity"),
    (b'{"formation": {"web": {"quantity": ' + b"9" * 5000 + b"}}}", "is not valid JSON"),
    (b'{"env": {"A": "1", "A": "2"}}', "the key 'A' appears twice"),
    (b'{"name": "x", "name": "y"}', "appears twice"),
    (b"", "is not valid JSON"),
    (b"{} {}", "is not valid JSON"),
]


@pytest.mark.parametrize(("data", "said"), RAW)
def test_hostile_bytes_are_refused(data: bytes, said: str) -> None:
    with pytest.raises(AppJsonError) as refused:
        appjson.parse(data)
    assert said in refused.value.message, refused.value.message


# ---- --from sources ----------------------------------------------------------------------

REFUSED_SOURCES = [
    ("ext::sh -c id", "takes no spaces"),
    ("ext::sh", "transport helper"),
    ("fd::17", "transport helper"),
    ("-uhttps://x", "must not start with '-'"),
    ("--upload-pack=touch /tmp/x", "takes no spaces"),
    ("--upload-pack=id", "must not start with '-'"),
    ("git@github.com:owner/repo.git", "scp-style host:path"),
    ("github.com:owner/repo", "scp-style"),
    ("ssh://git@github.com/owner/repo.git", "uses ssh://"),
    ("http://example.com/repo.git", "uses http://"),
    ("git://example.com/repo.git", "uses git://"),
    ("HTTPS+x://example.com/r", "uses https+x://"),
    ("relative/path", "is a relative path"),
    ("/srv/../etc/repo", "absolute path without '..'"),
    ("file://evil.example/srv/repo", "file:// URL with a host"),
    ("file:///srv/repo?x=1", "query or fragment"),
    ("https://", "no valid host"),
    ("https://exa mple.com/", "takes no spaces"),
    ("https://example.com:99999/r", "not a number from 1 to 65535"),
    ("https://example.com/r#frag", "#fragment"),
    ("https://ex_ample.com/r", "no valid host"),
    ("https://example.com/r\n", "control characters"),
    ("", "at most 2000"),
    ("https://example.com/" + "a" * 2000, "at most 2000"),
]


@pytest.mark.parametrize(("text", "said"), REFUSED_SOURCES)
def test_a_hostile_source_is_refused(text: str, said: str) -> None:
    with pytest.raises(UsageError) as refused:
        sources.parse(text)
    assert said in refused.value.message and "https://" in refused.value.message


def test_sources_that_are_taken() -> None:
    found = sources.parse("https://user:tok3n@example.com:8443/owner/repo.git")
    assert (found.kind, found.host, found.port) == ("https", "example.com", 8443)
    assert found.shown == "https://example.com:8443/owner/repo.git"    # no user, no token
    assert sources.parse("file:///srv/repo").url == "file:///srv/repo"
    assert sources.parse("/srv/repo").url == "file:///srv/repo"
    assert sources.parse("https://[2606:4700::1]/r").host == "2606:4700::1"


def fake(addresses: list[str]) -> sources.Resolver:
    return lambda host, port: addresses


@pytest.mark.parametrize("address", ["127.0.0.1", "10.1.2.3", "192.168.0.1", "169.254.169.254",
                                     "::1", "fd00::1", "::ffff:127.0.0.1", "0.0.0.0",
                                     "100.64.0.1", "fe80::1"])
def test_a_private_address_is_only_for_admins(address: str) -> None:
    source = sources.parse("https://example.com/repo.git")
    with pytest.raises(Forbidden) as refused:
        sources.check_allowed(source, admin=False, resolver=fake(["93.184.215.14", address]))
    assert "private, loopback or reserved" in refused.value.message
    assert sources.check_allowed(source, admin=True, resolver=fake([address])) == address


def test_the_resolved_address_is_pinned_and_local_paths_are_for_admins() -> None:
    source = sources.parse("https://example.com/repo.git")
    address = sources.check_allowed(source, admin=False, resolver=fake(["93.184.215.14"]))
    argv = sources.clone_argv("/usr/bin/git", source, address, Path("/tmp/x"))
    assert "http.curloptResolve=example.com:443:93.184.215.14" in argv
    assert "protocol.allow=never" in argv and "protocol.https.allow=always" in argv
    assert argv[argv.index("--") + 1] == source.url and "--depth" in argv
    v6 = sources.clone_argv("/usr/bin/git", source, "2606:4700::1", Path("/tmp/x"))
    assert "http.curloptResolve=example.com:443:[2606:4700::1]" in v6
    with pytest.raises(Forbidden):
        sources.check_allowed(sources.parse("/srv/repo"), admin=False)
    assert sources.check_allowed(sources.parse("/srv/repo"), admin=True) is None


def test_apps_create_words_and_their_log_line() -> None:
    assert appfrom.parse_args(["shop"]) == ("shop", None)
    assert appfrom.parse_args(["shop", "--from", "https://x/r"]) == ("shop", "https://x/r")
    assert appfrom.parse_args(["shop", "--from=https://x/r"]) == ("shop", "https://x/r")
    for bad in (["shop", "--from"], ["shop", "--from", "ext::sh", "-c", "id"], [],
                ["shop", "x"]):
        with pytest.raises(UsageError):
            appfrom.parse_args(bad)
    logged = redact.command_line(["apps:create", "shop", "--from", "https://u:tok@x/r"])
    assert logged == ["apps:create", "shop", "--from", redact.HIDDEN]
    assert "tok" not in " ".join(redact.command_line(
        ["apps:create", "shop", "--from=https://u:tok@x/r"]))


# ---- applying it (a real Store and a real repository; no server) -----------------------

def _store(tmp_path: Path) -> tuple[Store, App]:
    store = Store(tmp_path / "opus.db")
    store.init()
    owner = store.create_user("ann", "admin")
    return store, store.create_app("shop", owner, {"SECRET_KEY": "k" * 60,
                                                   "ALREADY": "mine"})


def test_before_build_sets_generates_keeps_and_refuses(tmp_path: Path) -> None:
    store, app = _store(tmp_path)
    settings = Settings(home=tmp_path)
    lines: list[str] = []
    spec = parse({"env": {"ALREADY": "theirs", "PLAIN": "v", "TOKEN": {"generator": "secret"},
                          "NEEDED": {"description": "a must"}, "MAYBE": {"required": False}}})
    with pytest.raises(BuildFailed) as refused:
        appsetup.before_build(settings, store, app, spec, lines.append)
    assert "run `opus config:set shop NEEDED=…`, then push again" in refused.value.message
    assert "       NEEDED is required: a must" in lines
    assert set(store.config(app)) == {"SECRET_KEY", "ALREADY"}     # nothing changed

    store.replace_config(app, {**store.config(app), "NEEDED": "given"})
    appsetup.before_build(settings, store, app, spec, lines.append)
    config = store.config(app)
    assert config["ALREADY"] == "mine" and config["PLAIN"] == "v"
    assert len(config["TOKEN"]) >= 60 and "MAYBE" not in config
    assert config["TOKEN"] not in "\n".join(lines)


def test_postgres_is_refused_before_anything_when_the_host_has_none(tmp_path: Path) -> None:
    store, app = _store(tmp_path)
    spec = parse({"env": {"PLAIN": "v"}, "addons": ["heroku-postgresql:essential-0"]})
    with pytest.raises(BuildFailed) as refused:
        appsetup.before_build(Settings(home=tmp_path), store, app, spec, lambda line: None)
    assert "`opus addons:enable postgres`" in refused.value.message
    assert "PLAIN" not in store.config(app)
    assert set(appsetup.PROVIDERS) == {"postgres", "redis"}


def test_redis_is_refused_before_anything_when_the_host_has_none(tmp_path: Path) -> None:
    store, app = _store(tmp_path)
    spec = parse({"env": {"PLAIN": "v"}, "addons": [{"plan": "heroku-redis:mini",
                                                     "as": "REDIS"}]})
    assert spec.addons == (appjson.Addon("redis", "heroku-redis:mini"),)
    with pytest.raises(BuildFailed) as refused:
        appsetup.before_build(Settings(home=tmp_path), store, app, spec, lambda line: None)
    assert "`opus addons:enable redis`" in refused.value.message
    assert "PLAIN" not in store.config(app) and store.app_redis(app) is None


def test_app_json_is_read_from_the_commit_and_must_be_a_plain_file(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    run = ["git", "-C", str(work), "-c", "user.name=T", "-c", "user.email=t@e"]
    subprocess.run([*run, "init", "-q", "-b", "main"], check=True)

    def commit(message: str) -> bytes:
        subprocess.run([*run, "add", "-A"], check=True)
        subprocess.run([*run, "commit", "-q", "--allow-empty", "-m", message], check=True)
        return subprocess.run([*run, "rev-parse", "HEAD"], check=True, capture_output=True
                              ).stdout.strip()

    (work / "readme").write_text("x")
    none = commit("no app.json")
    (work / "app.json").write_text('{"env": {"A": "1"}}')
    plain = commit("app.json")
    (work / "app.json").unlink()
    (work / "app.json").symlink_to("/etc/passwd")
    linked = commit("a link")
    (work / "app.json").unlink()
    (work / "app.json").mkdir()
    (work / "app.json" / "x").write_text("{}")
    directory = commit("a directory")
    repo = Repo(str(work))
    try:
        assert appsetup.read(repo, none) is None
        found = appsetup.read(repo, plain)
        assert found is not None and found.env[0].value == "1"
        for sha in (linked, directory):
            with pytest.raises(AppJsonError) as refused:
                appsetup.read(repo, sha)
            assert "is a link or a directory" in refused.value.message
    finally:
        repo.close()


def test_a_local_clone_is_capped_and_admitted_as_one_commit(tmp_path: Path) -> None:
    work = tmp_path / "upstream"
    work.mkdir()
    run = ["git", "-C", str(work), "-c", "user.name=Up", "-c", "user.email=up@e"]
    subprocess.run([*run, "init", "-q", "-b", "main"], check=True)
    for n in range(2):
        (work / "f.txt").write_text(f"v{n}\n" * 1000)
        subprocess.run([*run, "add", "-A"], check=True)
        subprocess.run([*run, "commit", "-q", "-m", f"commit {n}"], check=True)
    source = sources.parse(f"file://{work}")
    with pytest.raises(UsageError) as refused:
        sources.clone("/usr/bin/git", source, None, tmp_path / "small", max_bytes=100,
                      timeout=60)
    assert "is larger than 100 bytes (the operator sets max_pack_bytes)" in \
        refused.value.message
    clone = tmp_path / "clone"
    sources.clone("/usr/bin/git", source, None, clone, max_bytes=1 << 20, timeout=60)
    assert (clone / ".git" / "shallow").exists()
    bare = tmp_path / "app.git"
    Repo.init_bare(str(bare), mkdir=True, default_branch=b"main").close()
    sha = sources.admit("/usr/bin/git", clone, bare, source, max_bytes=1 << 20,
                        max_object_bytes=1 << 20, timeout=60)
    shown = subprocess.run(["git", "--git-dir", str(bare), "log", "--format=%P|%an|%B",
                            sha.decode()], check=True, capture_output=True, text=True).stdout
    assert shown.startswith("|Up|commit 1\n\nImported by Opus from " + str(work))
    assert not (bare / "shallow").exists()
    with pytest.raises(Exception, match="over the limit"):
        sources.admit("/usr/bin/git", clone, tmp_path / "app.git", source,
                      max_bytes=1 << 20, max_object_bytes=100, timeout=60)
