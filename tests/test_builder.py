"""The project builder: `opus init` and the dashboard's New project page.

The catalogue's checks meet hostile specs; each entry's project (made with
`--no-deploy`) passes `manage.py check` in one shared environment; `opus init --with
auth,api` deploys to the session's Opus over real SSH and serves its home page, its
sign-in page and DRF's /api/; `opus init --with blog,cms,celery` deploys in one push
with its own Redis (app.json) and a worker that runs a task through it; the dashboard's
/new makes, creates and pushes an app and streams the push, and refuses hostile form values.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import pytest

from opus_paas import settings as settings_module
from opus_paas.access import OPERATOR, Actor
from opus_paas.builder import catalogue, deploy, make, receive
from opus_paas.control import commands
from opus_paas.control.context import Context
from opus_paas.data import redis
from opus_paas.errors import OpusError, UsageError
from opus_paas.store import Store, User
from tests.conftest import Opus, SshKey, require_tool, shared_cache_dir
from tests.test_dashboard_http import Browser
from tests.test_databases import in_process

PASSWORD = "builder test password"

# ---- the catalogue and its checks (pure) --------------------------------------------------

HOSTILE_SPECS = [
    "pip:foo; rm -rf /", "pip:foo;rm", "git+ssh://git@github.com/x/y.git",
    "git+https://x.example/y --upgrade", "git+https://x.example/y\n--index-url=http://evil",
    "pip:-e .", "pip:-e", "pip:foo\nbar", "pip:foo bar", "pip:", "pip:foo @ https://evil.x/a",
    "pip:foo==1.0; python_version<'4'", "pip:foo --index-url=http://evil", "-r /etc/passwd",
    "-e .", "git+http://example.com/x/y", "git+file:///etc/x", "git+https://u:p@host.com/x",
    "git+https://host.com/../x", "git+https://host.com/x/..", "git+https://-oProxy.com/x",
    "pip:foo==1.0\r", "pip:foo\x00", "pip:../x", "pip:foo[bar;baz]", "pip:foo>=1.0,<2",
    "https://example.com/x.whl", "nope", "AUTH", "auth\n", "pip:foo\tbar",
]


@pytest.mark.parametrize("spec", HOSTILE_SPECS)
def test_hostile_specs_are_refused_with_what_is_taken(spec: str) -> None:
    with pytest.raises(UsageError) as refused:
        catalogue.choose([spec])
    message = refused.value.message
    assert "\n" not in message and "\x00" not in message
    assert any(word in message for word in ("pip:NAME", "git+https://", "choose from"))


def test_good_specs_become_requirement_lines() -> None:
    choice = catalogue.choose(["api,auth", "pip:django-taggit==6.1.0", "pip:django-filter",
                               "git+https://github.com/owner/repo.git@v1.2#egg=repo",
                               "auth"], "postgres")
    assert choice.keys == ["auth", "api"]
    assert choice.requirements == [
        catalogue.DJANGO, catalogue.POSTGRES_REQUIREMENT, "djangorestframework>=3.16,<3.19",
        "django-taggit==6.1.0", "django-filter",
        "git+https://github.com/owner/repo.git@v1.2#egg=repo"]
    files = make.project_files("myapp", choice, "3.11")
    assert files["requirements.txt"].splitlines() == choice.requirements
    assert files[".python-version"] == "3.11\n"
    assert json.loads(files["app.json"])["name"] == "myapp"
    with pytest.raises(UsageError, match="--db takes"):
        catalogue.choose(["auth"], "mysql; drop")
    with pytest.raises(UsageError, match="at most"):
        catalogue.choose(["pip:a"] * 21)


def test_the_procfile_app_json_and_python_version() -> None:
    celery = catalogue.choose(["celery"])
    files = make.project_files("w", celery, "3.12")
    assert files["Procfile"] == ("release: python manage.py migrate --noinput\n"
                                 "worker: celery -A config worker --loglevel=info "
                                 "--concurrency=2\n")
    assert 'href="/tasks/"' in files["templates/home.html"]
    assert "signing.loads(token" in files["config/task_views.py"]
    spec = json.loads(files["app.json"])
    assert spec["addons"] == ["heroku-redis"]
    assert spec["formation"] == {"web": {"quantity": 1}, "worker": {"quantity": 1}}
    assert {"addons", "formation"} & set(json.loads(make.project_files(
        "w", catalogue.choose(["auth"]), "3.12")["app.json"])) == {"formation"}
    # Wagtail's catch-all goes after every other entry's urls, whatever the order given.
    assert catalogue.choose(["cms,celery,blog"]).keys == ["blog", "celery", "cms"]
    assert make.python_version((3, 9)) == "3.14" and make.python_version((3, 12)) == "3.12"
    assert "templates/home.html" not in make.project_files("w", catalogue.choose(["cms"]),
                                                          "3.12")


@pytest.mark.parametrize("url", ["ssh://-oProxyCommand=x@host", "ssh://git@host;rm:22",
                                 "ssh://git@host:99999", "git@host:22 -v", "ssh://git@ho st",
                                 "ssh://git@host:22/app.git", "file:///x", "\nhost"])
def test_hostile_server_urls_are_refused(url: str) -> None:
    with pytest.raises(UsageError, match="not an Opus SSH address"):
        deploy.parse_server(url)


def test_server_urls() -> None:
    assert deploy.parse_server("ssh://git@opus.example.com:2222/") == \
        deploy.Server("opus.example.com", 2222, "git")
    assert deploy.parse_server("opus.example.com").git_url("a") == \
        "ssh://git@opus.example.com:22/a.git"


# ---- opus init on this machine ------------------------------------------------------------

def init(*args: str, cwd: Path, env: dict[str, str] | None = None,
         timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`opus init ARGS` as a user types it, in `cwd`."""
    return subprocess.run([sys.executable, "-m", "opus_paas", "init", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)


def init_here(*args: str, cwd: Path) -> tuple[int, str]:
    """`opus init ARGS` through the command table in this process (no interpreter to
    start): its exit status and output (errors as the CLI prints them)."""
    lines: list[str] = []
    settings = settings_module.load({"OPUS_HOME": str(cwd / ".no-opus")})
    ctx = Context(settings, OPERATOR, lines.append, lambda _limit: "")
    previous = Path.cwd()
    os.chdir(cwd)
    try:
        status = commands.run(ctx, ["init", *args])
    except OpusError as exc:
        lines.append(f"opus: {exc.message}")
        status = exc.exit_code
    finally:
        os.chdir(previous)
    return status, "\n".join(lines)


def test_init_refuses_a_symlink_a_file_and_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "file").write_text("mine")
    for target, said in (("full", "is not empty"), ("link", "symbolic link"),
                         ("file", "not a directory")):
        status, output = init_here(target, "--no-deploy", cwd=tmp_path)
        assert status == 2 and said in output, output
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]
    assert not any((tmp_path / "elsewhere").iterdir())
    status, output = init_here("Bad_Name", "--no-deploy", cwd=tmp_path)
    assert status == 2 and "--app NAME" in output
    status, output = init_here("x", "--with", "pip:foo; rm -rf /", "--no-deploy", cwd=tmp_path)
    assert status == 2 and "pip:NAME" in output
    status, output = init_here("x", "--with", "auth", cwd=tmp_path)
    assert status == 2 and "--server" in output, "no Opus here, none named"
    status, output = init_here("x", "--bogus", cwd=tmp_path)
    assert status == 2 and "usage" in output
    assert not (tmp_path / "x").exists()
    status, output = init_here("--list", cwd=tmp_path)
    assert status == 0 and all(k in output for k in catalogue.ENTRIES)


@pytest.fixture(scope="module")
def check_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One environment with every entry's packages (uv, from a cache of the builder's
    own tests), in which each entry's project runs `manage.py check`."""
    uv = require_tool(str(Path(sys.executable).parent / "uv"))
    venv = tmp_path_factory.mktemp("builder-venv") / "venv"
    env = {**os.environ, "UV_CACHE_DIR": str(shared_cache_dir() / "builder-uv")}
    requirements = catalogue.choose([*catalogue.ENTRIES, "pip:django-filter"]).requirements
    for argv in ([uv, "venv", "-q", "--python", sys.executable, str(venv)],
                 [uv, "pip", "install", "-q", "--python", str(venv / "bin" / "python"),
                  *requirements]):
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600,
                              check=False)
        assert done.returncode == 0, done.stderr
    return venv / "bin" / "python"


def test_a_project_with_every_entry_passes_manage_py_check(check_python: Path,
                                                          tmp_path: Path) -> None:
    """Every entry at once (auth and api are deployed and served below, too)."""
    status, output = init_here("everything", "--with", ",".join(catalogue.ENTRIES),
                               "--with", "pip:django-filter", "--no-deploy", cwd=tmp_path)
    assert status == 0, output
    project = tmp_path / "everything"
    assert "Not deployed (--no-deploy)" in output
    log = subprocess.run(["git", "-C", str(project), "status", "--porcelain"],
                         capture_output=True, text=True, check=True)
    assert log.stdout == "", "the project is committed whole"
    checked = subprocess.run([str(check_python), "manage.py", "check", "--fail-level",
                              "WARNING"], cwd=project, capture_output=True, text=True,
                             timeout=120, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "no issues" in checked.stdout


def test_init_over_ssh_says_to_run_it_on_your_machine(opus: Opus, admin_key: SshKey) -> None:
    done = subprocess.run(["ssh", "-i", str(admin_key.private), "-o", "IdentitiesOnly=yes",
                           "-o", "StrictHostKeyChecking=no", "-o",
                           "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
                           "-o", "BatchMode=yes", "-p", str(opus.ssh_port), "git@127.0.0.1",
                           "init myapp --with auth"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 2 and "run it there" in done.stderr, done.stderr


def test_opus_init_with_auth_and_api_deploys_and_serves(opus: Opus, admin_key: SshKey,
                                                        tmp_path: Path) -> None:
    env = {**admin_key.git_env(opus), **{k: v for k, v in opus.env.items()
                                         if k.startswith("OPUS_")}}
    done = init("initapi", "--with", "auth,api", "--server",
                f"ssh://git@127.0.0.1:{opus.ssh_port}", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "remote: -----> Released v1" in done.stdout, done.stdout
    assert f"initapi is live: http://initapi.localhost:{opus.http_port}/" in done.stdout
    host = opus.app_host("initapi")
    status, _headers, page = opus.get(host)
    assert status == 200 and "<h1>initapi</h1>" in page and "/api/" in page, page[:500]
    status, _headers, page = opus.get(host, "/accounts/login/")
    assert status == 200 and "Sign in" in page and "csrfmiddlewaretoken" in page
    status, _headers, page = opus.get(host, "/api/?format=json")
    assert status == 200 and json.loads(page) == {}, page[:300]
    remote = subprocess.run(["git", "-C", str(tmp_path / "initapi"), "remote", "get-url",
                             "opus"], capture_output=True, text=True, check=True)
    assert remote.stdout.strip() == f"ssh://git@127.0.0.1:{opus.ssh_port}/initapi.git"


def _post_form(opus: Opus, host: str, path: str, fields: dict[str, str]
               ) -> tuple[int, str]:
    """GET `path`'s form for its CSRF token and cookie, POST `fields` with them; the
    status and Location (redirects are not followed)."""
    status, headers, page = opus.get(host, path)
    assert status == 200, page[:500]
    cookie = headers["Set-Cookie"].split(";", 1)[0]
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert token and cookie.startswith("csrftoken="), (headers, page[:500])
    body = urllib.parse.urlencode({"csrfmiddlewaretoken": token.group(1), **fields})
    conn = http.client.HTTPConnection("127.0.0.1", opus.http_port, timeout=30)
    try:
        conn.request("POST", path, body, {
            "Host": host, "Cookie": cookie,
            "Content-Type": "application/x-www-form-urlencoded"})
        response = conn.getresponse()
        response.read()
        return response.status, response.getheader("Location") or ""
    finally:
        conn.close()


def test_opus_init_with_blog_cms_and_celery_deploys_a_worker_on_its_own_redis(
        opus: Opus, admin_key: SshKey, tmp_path: Path) -> None:
    """One push: app.json gives the app its Redis (REDIS_URL) and a worker; the blog's
    admin, Wagtail's pages and editor answer; a task goes through Redis to the worker
    and its result comes back."""
    require_tool(redis.REDIS_SERVER)
    said: list[str] = []   # (read-only and add-on commands in this process: no CLI start-up)
    assert in_process(opus, ["addons:enable", "redis"], said) is None and \
        "Redis enabled" in said[0], said
    env = {**admin_key.git_env(opus), **{k: v for k, v in opus.env.items()
                                         if k.startswith("OPUS_")}}
    started = time.monotonic()
    done = init("initall", "--with", "cms,celery,blog", "--server",
                f"ssh://git@127.0.0.1:{opus.ssh_port}", cwd=tmp_path, env=env)
    pushed = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "remote: -----> Released v1" in out, out
    assert "Started the app's Redis (initall-redis, REDIS_URL)" in out, out
    assert "Scale worker=1 (app.json's formation)" in out and "Scaled to 0" not in out, out
    print(f"opus init --with blog,cms,celery: made and deployed in {pushed:.1f} s")
    host = opus.app_host("initall")
    status, _headers, page = opus.get(host, "/admin/blog_core/")  # to the admin's sign-in
    assert status == 200 and "csrfmiddlewaretoken" in page and "Django" in page, page[:500]
    status, _headers, page = opus.get(host, "/cms/login/")
    assert status == 200 and "wagtail" in page.lower() and "csrfmiddlewaretoken" in page, \
        page[:500]
    status, _headers, page = opus.get(host, "/")
    assert status == 200 and "Wagtail" in page, page[:500]
    status, location = _post_form(opus, host, "/tasks/", {"x": "2", "y": "40"})
    assert status == 302 and location.startswith("/tasks/"), (status, location)
    deadline = time.monotonic() + 15
    answer: dict[str, object] = {}
    while time.monotonic() < deadline:
        status, _headers, page = opus.get(host, location)
        assert status == 200, page[:500]
        answer = json.loads(page)
        if answer["state"] == "SUCCESS":
            break
        time.sleep(0.3)
    assert answer == {"state": "SUCCESS", "result": 42}, answer
    forged = location.rstrip("/")[:-3] + "AAA/"
    assert opus.get(host, forged)[0] == 404, "only a result this app's view signed is read"
    assert _post_form(opus, host, "/tasks/", {"x": "2", "y": "1e99"})[0] == 400
    said.clear()
    assert in_process(opus, ["ps", "initall"], said) is None
    assert any(re.match(r"worker\.1  RUNNING ", line) for line in said), said
    said.clear()
    assert in_process(opus, ["config:get", "initall", "REDIS_URL"], said) is None
    url = said[0].strip()
    assert re.fullmatch(r"redis://:[A-Za-z0-9_-]{43}@127\.0\.0\.1:\d+/0", url), url


# ---- the dashboard's New project page -----------------------------------------------------

@pytest.fixture(scope="module")
def builder_user(opus: Opus, admin_key: SshKey) -> str:
    """A developer (app_creators is "all" here) with a dashboard password (and no SSH
    key: the dashboard pushes as them without one)."""
    opus.cli("users:add", "builderdev", "--role", "developer")
    opus.cli("users:passwd", "builderdev", input=PASSWORD + "\n")
    return "builderdev"


@pytest.fixture(scope="module")
def signed_in(opus: Opus, builder_user: str) -> Browser:
    browser = Browser(opus)
    assert browser.sign_in(builder_user, PASSWORD) == 303
    return browser


def test_the_new_project_page_deploys_and_streams_the_push(opus: Opus,
                                                           builder_user: str) -> None:
    browser = Browser(opus)
    assert browser.sign_in(builder_user, PASSWORD) == 303
    status, apps_page = browser.request("GET", "/")
    assert status == 200 and 'href="/new"' in apps_page
    status, form = browser.request("GET", "/new")
    assert status == 200 and all(f'value="{k}"' in form for k in catalogue.ENTRIES)
    token = browser.token("/new")
    started = time.monotonic()
    response, conn = browser.open("POST", "/new", {"csrf_token": token, "app": "initweb",
                                                   "with": "auth", "db": "sqlite"},
                                  timeout=300)
    try:
        assert response.status == 200
        seen: list[tuple[float, str]] = []
        for raw in response:
            seen.append((time.monotonic() - started, raw.decode("utf-8", "replace")))
    finally:
        conn.close()
    text = "".join(line for _at, line in seen)
    assert "initweb is live" in text, text[-3000:]
    assert "Released v1" in text and "Making a Django project for initweb" in text
    first = next(at for at, line in seen if "Making a Django project" in line)
    released = next(at for at, line in seen if "Released v1" in line)
    assert released - first > 1, "the output came all at once, not as it happened"
    assert opus.home.as_posix() not in text, "a server path reached the page"
    status, _headers, page = opus.get(opus.app_host("initweb"))
    assert status == 200 and "<h1>initweb</h1>" in page
    owner = opus.cli("apps:info", "initweb", "--json").stdout
    assert json.loads(owner)["owner"] == builder_user
    assert not list((opus.home / "staging").glob("new-project-*")), "its scratch copy stays"
    again, _page = browser.request("POST", "/new", {"csrf_token": token, "app": "initweb",
                                                    "with": "auth"})
    assert again == 303
    assert "initweb already exists" in browser.request("GET", "/new")[1]


HOSTILE_FORMS = [
    {"app": "../etc", "with": "auth"}, {"app": "x;rm -rf /", "with": "auth"},
    {"app": "initbad", "with": "pip:foo"}, {"app": "initbad", "with": "auth\nbad"},
    {"app": "initbad", "with": "git+https://evil.example/x/y"},
    {"app": "initbad", "with": "auth", "db": "mysql"}, {"app": "opus", "with": "auth"},
    {"app": "initbad", "with": "x" * 5000},
]


def test_hostile_new_project_forms_are_refused(opus: Opus, signed_in: Browser) -> None:
    token = signed_in.token("/new")
    for form in HOSTILE_FORMS:
        status, _page = signed_in.request("POST", "/new", {"csrf_token": token, **form})
        assert status == 303, form
        _status, page = signed_in.request("GET", "/new")
        assert 'class="error"' in page, form
    made = {p.name for p in (opus.home / "repos").iterdir()}
    assert not made & {"initbad.git", "etc.git", "opus.git"}, made


def test_a_new_project_form_without_its_token_is_refused(opus: Opus,
                                                         signed_in: Browser) -> None:
    status, _page = signed_in.request("POST", "/new", {"app": "initcsrf", "with": "auth"})
    assert status == 400
    assert not (opus.home / "repos" / "initcsrf.git").exists()


@pytest.mark.parametrize("argv", [
    ["--user", "x;rm -rf /", "/app.git"], ["--user", "admin", "/../etc.git"],
    ["--user", "admin", "/app.git; rm"], ["--user", "-oProxy", "/app.git"],
    ["--user", "admin"], ["/app.git"], ["--user", "admin", "/app.git", "extra"],
])
def test_the_hosts_receive_pack_refuses_hostile_arguments(
        argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert receive.main(argv) == 2
    said = capsys.readouterr().err
    assert said.startswith(("opus: invalid", "usage:")), said


def test_the_receive_pack_command_line_is_quoted() -> None:
    actor = Actor(User(1, "dev-1", "developer"))
    line = deploy.receive_pack_command(actor, "/opt/my python/bin/python3")
    assert shlex.split(line) == ["/opt/my python/bin/python3", "-m",
                                 "opus_paas.builder.receive", "--user", "dev-1"]
    with pytest.raises(UsageError):
        deploy.receive_pack_command(OPERATOR)


def test_a_refused_dashboard_push_keeps_the_project_on_a_branch(
        opus: Opus, builder_user: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """deploy_here as the dashboard calls it, for a project whose build fails: the app
    stays without a release and the project waits on its opus-init branch."""
    for key, value in opus.env.items():
        if key.startswith("OPUS_"):
            monkeypatch.setenv(key, value)
    settings = settings_module.load()
    store = Store(settings.db_path)
    user = store.get_user(builder_user)
    assert user is not None
    project = tmp_path / "initfail"
    make.make(project, "initfail", catalogue.choose([]), lambda _line: None)
    (project / ".python-version").write_text("2.7\n")   # no Opus builds that
    subprocess.run(["git", "-C", str(project), "-c", "user.name=T", "-c",
                    "user.email=t@example.com", "commit", "-qam", "ask for 2.7"], check=True)
    lines: list[str] = []
    with pytest.raises(OpusError) as refused:
        deploy.deploy_here(settings, store, Actor(user), project, "initfail", "sqlite",
                           lines.append, threading.Event(), commands.run)
    assert "git clone -b opus-init" in refused.value.message
    assert any("2.7" in line for line in lines), lines
    repo = opus.home / "repos" / "initfail.git"
    kept = subprocess.run(["git", "--git-dir", str(repo), "rev-parse", "opus-init"],
                          capture_output=True, text=True, check=True).stdout.strip()
    mine = subprocess.run(["git", "-C", str(project), "rev-parse", "main"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert kept == mine
    assert json.loads(opus.cli("apps:info", "initfail", "--json").stdout)["release"] is None
