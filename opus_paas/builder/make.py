"""Writing a new project: django-admin startproject, then each entry's snippets, the
Procfile, .python-version, requirements.txt, app.json, .gitignore; git init and commit.

The project's settings package is `config`; everything Opus needs at deploy time
(ALLOWED_HOSTS, SECRET_KEY, DATABASES, STATIC_ROOT) comes from Opus's settings overlay,
so the generated settings stay those of a project a developer runs locally.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from opus_paas import output
from opus_paas.builder.catalogue import CELERY_INIT, PROJECT, Choice
from opus_paas.errors import OpusError, UsageError
from opus_paas.output import Emit

# Django 5.2 runs on these; the project asks for the Python that makes it, within them.
PYTHONS = ((3, 10), (3, 14))
DEFAULT_IDENTITY = ("Opus project builder", "builder@opus.invalid")

HOME_TEMPLATE = """\
{% extends "base.html" %}
{% block content %}
<h1>{{ app }}</h1>
<p>A new Django project, deployed by Opus.</p>
<ul>
  <li><a href="/admin/">The admin</a></li>
@LINKS@</ul>
{% endblock %}
"""
BASE_TEMPLATE = """\
<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>@APP@</title></head>
<body>
{% block content %}{% endblock %}
</body>
</html>
"""
LINKS = {"auth": ("/accounts/login/", "Sign in"),
         "blog": ("/admin/blog_core/", "The blog's admin (each blog is at /blog/SLUG/)"),
         "api": ("/api/", "The REST API"),
         "celery": ("/tasks/", "A Celery task, run by the worker")}
GITIGNORE = "__pycache__/\n*.py[cod]\n.venv/\nvenv/\ndb.sqlite3\nstaticfiles/\nmedia/\n.env\n"


def check_target(directory: Path) -> None:
    """DIR must be absent or an empty directory, and not a symlink."""
    if directory.is_symlink():
        raise UsageError(f"{directory} is a symbolic link; give a new directory's path")
    if directory.exists():
        if not directory.is_dir():
            raise UsageError(f"{directory} exists and is not a directory; give a new "
                             "directory's path")
        if any(directory.iterdir()):
            raise UsageError(f"{directory} is not empty; give a new or empty directory "
                             "(nothing in it was changed)")


def python_version(version: tuple[int, int] | None = None) -> str:
    """The .python-version: this Python's, if Django 5.2 runs on it; else the newest
    Django 5.2 supports."""
    major, minor = version or (sys.version_info.major, sys.version_info.minor)
    if not PYTHONS[0] <= (major, minor) <= PYTHONS[1]:
        major, minor = PYTHONS[1]
    return f"{major}.{minor}"


def startproject_argv(uv: str | None = None) -> list[str]:
    """django-admin startproject from this Python's Django (5.2 or 4.2, whose project
    template is the same shape), else Django 5.2 fetched by uv."""
    try:
        version = importlib.metadata.version("django")
    except importlib.metadata.PackageNotFoundError:
        version = ""
    if uv is None and version.split(".")[:1] in (["5"], ["4"]):
        return [sys.executable, "-m", "django", "startproject"]
    if uv is None:
        from uv import find_uv_bin  # the uv package Opus depends on
        uv = find_uv_bin()
    return [uv, "tool", "run", "--quiet", "--from", "django>=5.2,<5.3", "django-admin",
            "startproject"]


def make(directory: Path, app: str, choice: Choice, emit: Emit, *,
         env: Mapping[str, str] | None = None, uv: str | None = None,
         identity: tuple[str, str] | None = None,
         python: str | None = None) -> None:
    """Write the project into `directory` (absent or empty) and commit it on main."""
    check_target(directory)
    directory.mkdir(parents=True, exist_ok=True)
    run_env = dict(env if env is not None else os.environ)
    emit(output.step(f"Making a Django project for {app} with "
                     f"{', '.join(choice.keys) or 'nothing but Django'}"))
    _run([*startproject_argv(uv), PROJECT, str(directory)], directory, run_env)
    for relative, text in project_files(app, choice, python or python_version()).items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    edit_settings(directory / PROJECT / "settings.py", app, choice)
    edit_urls(directory / PROJECT / "urls.py", app, choice)
    init = directory / PROJECT / "__init__.py"
    for entry in choice.entries:
        if entry.key == "celery":
            init.write_text(init.read_text() + CELERY_INIT)
    emit(output.detail("requirements.txt: " + ", ".join(choice.requirements)))
    commit(directory, run_env, identity)
    emit(output.step(f"Committed on main in {directory}"))


def project_files(app: str, choice: Choice, python: str) -> dict[str, str]:
    """Every file the builder writes besides startproject's (pure)."""
    files: dict[str, str] = {
        "requirements.txt": "".join(f"{line}\n" for line in choice.requirements),
        ".python-version": f"{python}\n",
        ".gitignore": GITIGNORE,
        "templates/base.html": BASE_TEMPLATE.replace("@APP@", app),
        "app.json": json.dumps(app_json(app, choice), indent=2) + "\n",
    }
    procfile = ["release: python manage.py migrate --noinput"]
    for entry in choice.entries:
        procfile += entry.procfile
        files.update(entry.files)
    files["Procfile"] = "".join(f"{line}\n" for line in procfile)
    if not any(e.owns_root for e in choice.entries):
        links = "".join(f'  <li><a href="{LINKS[k][0]}">{LINKS[k][1]}</a></li>\n'
                        for k in choice.keys if k in LINKS)
        files["templates/home.html"] = HOME_TEMPLATE.replace("@LINKS@", links)
    return files


def app_json(app: str, choice: Choice) -> dict[str, object]:
    """Heroku's app.json: what the app is, the add-ons its entries need (celery: its own
    Redis, so REDIS_URL is set before the first build) and their processes' scale (a
    worker running from the first release). Its database, when Postgres, is made by the
    builder's `pg:create`, so it is not listed to be made twice."""
    made_with = ", ".join(choice.keys) or "Django alone"
    spec: dict[str, object] = {
        "name": app, "description": f"A Django project made by `opus init` with {made_with}"}
    addons = [a for e in choice.entries for a in e.addons]
    if addons:
        spec["addons"] = list(dict.fromkeys(addons))
    formation: dict[str, object] = {"web": {"quantity": 1}}
    formation.update({kind: {"quantity": quantity} for e in choice.entries
                      for kind, quantity in e.formation})
    spec["formation"] = formation
    return spec


def edit_settings(path: Path, app: str, choice: Choice) -> None:
    text = path.read_text()
    text = _replace_once(text, "'DIRS': [],", "'DIRS': [BASE_DIR / 'templates'],", path)
    apps = [a for e in choice.entries for a in e.installed_apps]
    if apps:
        lines = "".join(f"    '{a}',\n" for a in apps)
        text = _replace_once(text, "INSTALLED_APPS = [\n", f"INSTALLED_APPS = [\n{lines}",
                             path)
    middleware = [m for e in choice.entries for m in e.middleware]
    if middleware:
        end = text.index("]", text.index("MIDDLEWARE = ["))
        text = text[:end] + "".join(f"    '{m}',\n" for m in middleware) + text[end:]
    snippets = [e.settings.replace("{app}", app) for e in choice.entries if e.settings]
    text += ("\n\n# Added by `opus init` for: " + ", ".join(choice.keys or ["Django"]) + "\n"
             "import os  # noqa: E402\n\n"
             'STATIC_ROOT = BASE_DIR / "staticfiles"\n' + "".join(snippets))
    path.write_text(text)


def edit_urls(path: Path, app: str, choice: Choice) -> None:
    text = path.read_text()
    imports = ["from django.urls import include, path",
               "from django.views.generic import TemplateView"]
    imports += [i for e in choice.entries for i in e.url_imports]
    text = _replace_once(text, "from django.urls import path", "\n".join(imports), path)
    patterns = [u for e in choice.entries for u in e.urls]
    if not any(e.owns_root for e in choice.entries):
        patterns.insert(0, 'path("", TemplateView.as_view(template_name="home.html", '
                           f'extra_context={{"app": "{app}"}})),')
    lines = "".join(f"    {p}\n" for p in patterns)
    text = _replace_once(text, "    path('admin/', admin.site.urls),\n",
                         f"    path('admin/', admin.site.urls),\n{lines}", path)
    path.write_text(text)


def _replace_once(text: str, old: str, new: str, path: Path) -> str:
    if text.count(old) != 1:
        raise OpusError(f"{path.name} from django-admin startproject is not the shape the "
                        f"builder knows (no {old.strip()!r}); report it with your Django's "
                        "version")
    return text.replace(old, new)


def commit(directory: Path, env: dict[str, str], identity: tuple[str, str] | None) -> None:
    git = ["git", "-C", str(directory)]
    _run([*git, "init", "-q", "-b", "main"], directory, env)
    _run([*git, "add", "-A"], directory, env)
    if identity is None:
        configured = subprocess.run([*git, "config", "user.email"], env=env,
                                    capture_output=True, text=True, check=False)
        identity = None if configured.stdout.strip() else DEFAULT_IDENTITY
    who = [] if identity is None else ["-c", f"user.name={identity[0]}",
                                       "-c", f"user.email={identity[1]}"]
    _run([*git[:3], *who, "commit", "-q", "-m", "New Django project (opus init)"],
         directory, env)


def _run(argv: list[str], cwd: Path, env: dict[str, str]) -> None:
    try:
        done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise OpusError(f"{Path(argv[0]).name} could not run ({exc}); is it installed?") \
            from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        shown = " ".join([Path(argv[0]).name, *argv[1:4]])
        raise OpusError(f"`{shown} …` failed: {' / '.join(detail)}")
