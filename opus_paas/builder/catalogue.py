"""What a new project can be made with: named entries and package specs, checked.

Pure data and validation, no I/O. An entry is pip requirements, INSTALLED_APPS, a
settings snippet, urls (imports and patterns), Procfile lines and files of its own.
Besides the named entries, `pip:NAME[==VERSION]` and `git+https://HOST/PATH[@REF]`
add any reusable app's package to requirements.txt; those are checked strictly, since
the line lands in a file pip reads (no options, no markers, no whitespace).
"""

from __future__ import annotations

import dataclasses
import re

from opus_paas.errors import UsageError

DJANGO = "Django>=5.2,<5.3"
# The settings package startproject makes; not the app's name, which may be anything
# (and could shadow an installed module such as `celery`).
PROJECT = "config"


@dataclasses.dataclass(frozen=True)
class Entry:
    key: str
    summary: str
    requirements: tuple[str, ...] = ()
    installed_apps: tuple[str, ...] = ()
    middleware: tuple[str, ...] = ()
    settings: str = ""
    url_imports: tuple[str, ...] = ()
    urls: tuple[str, ...] = ()
    procfile: tuple[str, ...] = ()
    files: tuple[tuple[str, str], ...] = ()   # (path in the project, text)
    owns_root: bool = False                   # serves `/` itself (no generated home page)
    addons: tuple[str, ...] = ()              # app.json add-ons made on the first deploy
    formation: tuple[tuple[str, int], ...] = ()   # app.json formation (Procfile types)


LOGIN_TEMPLATE = """\
{% extends "base.html" %}
{% block content %}
<h1>Sign in</h1>
<form method="post">
  {% csrf_token %}
  {{ form.as_p }}
  <input type="hidden" name="next" value="{{ next }}">
  <button type="submit">Sign in</button>
</form>
{% endblock %}
"""

CELERY_APP = """\
\"\"\"The Celery app: `celery -A config worker` (the Procfile's worker: line).

The broker and the result backend are CELERY_BROKER_URL and CELERY_RESULT_BACKEND,
else REDIS_URL (what Opus's Redis add-on sets; app.json asks for it).
\"\"\"

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("config", include=["config.tasks"])
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
"""

CELERY_TASKS = """\
\"\"\"Tasks the worker runs; /tasks/ enqueues `add` and shows its result.\"\"\"

from celery import shared_task


@shared_task
def add(x, y):
    return x + y
"""

CELERY_VIEWS = """\
\"\"\"/tasks/: a form that enqueues `add`, and /tasks/TOKEN/ with its state and result.

TOKEN is the task's id signed with SECRET_KEY, so only results of tasks enqueued
here can be read, not those of any other task in the result backend.
\"\"\"

from celery.result import AsyncResult
from django.core import signing
from django.http import Http404, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from config.tasks import add

SALT = "config.task_views"


@require_http_methods(["GET", "POST"])
def start(request):
    if request.method == "GET":
        return render(request, "tasks.html")
    try:
        x, y = (int(request.POST.get(name, "")) for name in ("x", "y"))
    except ValueError:
        return render(request, "tasks.html", {"error": "x and y are whole numbers"},
                      status=400)
    if not all(-10**9 <= n <= 10**9 for n in (x, y)):
        return render(request, "tasks.html", {"error": "x and y are at most 10^9"},
                      status=400)
    task = add.delay(x, y)
    return redirect("task-result", token=signing.dumps(task.id, salt=SALT))


def result(request, token):
    try:
        task_id = signing.loads(token, salt=SALT)
    except signing.BadSignature:
        raise Http404("no such task") from None
    found = AsyncResult(task_id)
    done = found.successful()
    return JsonResponse({"state": found.state, "result": found.result if done else None})
"""

TASKS_TEMPLATE = """\
{% extends "base.html" %}
{% block content %}
<h1>A Celery task</h1>
<p>The worker (the Procfile's <code>worker:</code>) adds two numbers through Redis.</p>
{% if error %}<p>{{ error }}</p>{% endif %}
<form method="post">
  {% csrf_token %}
  <input name="x" value="2" inputmode="numeric"> +
  <input name="y" value="3" inputmode="numeric">
  <button type="submit">Add them on the worker</button>
</form>
{% endblock %}
"""

CELERY_INIT = """\
# The Celery app is loaded with Django, so @shared_task uses it.
from .celery import app as celery_app

__all__ = ("celery_app",)
"""

API_ROUTER = """\
\"\"\"The REST API's router: register viewsets here, e.g.
router.register("articles", ArticleViewSet); they appear under /api/.\"\"\"

from rest_framework import routers

router = routers.DefaultRouter()
"""

ENTRIES: dict[str, Entry] = {e.key: e for e in [
    Entry(
        "auth", "sign-in pages (django.contrib.auth) and the admin at /admin/",
        installed_apps=(),   # startproject already lists auth, admin, sessions
        settings='LOGIN_REDIRECT_URL = "/"\nLOGOUT_REDIRECT_URL = "/"\n',
        urls=('path("accounts/", include("django.contrib.auth.urls")),',),
        files=(("templates/registration/login.html", LOGIN_TEMPLATE),),
    ),
    Entry(
        "blog", "blogs at /blog/SLUG/ (django-blog-core), written in the admin",
        requirements=("django-blog-core>=0.1.7,<0.2",),
        installed_apps=("blog_core",),
        urls=('path("blog/", include("blog_core.urls")),',),
    ),
    Entry(
        "api", "a REST API at /api/ (Django REST framework)",
        requirements=("djangorestframework>=3.16,<3.19",),
        installed_apps=("rest_framework",),
        settings=('REST_FRAMEWORK = {\n    "DEFAULT_PERMISSION_CLASSES": [\n'
                  '        "rest_framework.permissions.IsAuthenticatedOrReadOnly",\n'
                  '    ],\n}\n'),
        url_imports=(f"from {PROJECT}.api import router",),
        urls=('path("api/", include(router.urls)),',
              'path("api-auth/", include("rest_framework.urls")),'),
        files=((f"{PROJECT}/api.py", API_ROUTER),),
    ),
    Entry(
        "cms", "Wagtail CMS: pages at /, its editor at /cms/",
        requirements=("wagtail>=7.0,<8.1",),
        installed_apps=("wagtail.contrib.forms", "wagtail.contrib.redirects",
                        "wagtail.embeds", "wagtail.sites", "wagtail.users",
                        "wagtail.snippets", "wagtail.documents", "wagtail.images",
                        "wagtail.search", "wagtail.admin", "wagtail", "modelcluster",
                        "taggit"),
        middleware=("wagtail.contrib.redirects.middleware.RedirectMiddleware",),
        settings=('WAGTAIL_SITE_NAME = "{app}"\n'
                  'WAGTAILADMIN_BASE_URL = os.environ.get("WAGTAILADMIN_BASE_URL", "")\n'
                  'MEDIA_ROOT = BASE_DIR / "media"\nMEDIA_URL = "/media/"\n'
                  "DATA_UPLOAD_MAX_NUMBER_FIELDS = 10_000\n"),
        url_imports=("from wagtail import urls as wagtail_urls",
                     "from wagtail.admin import urls as wagtailadmin_urls",
                     "from wagtail.documents import urls as wagtaildocs_urls"),
        # Wagtail's page tree serves everything not matched before it: it goes last.
        urls=('path("cms/", include(wagtailadmin_urls)),',
              'path("documents/", include(wagtaildocs_urls)),',
              'path("", include(wagtail_urls)),'),
        owns_root=True,
    ),
    Entry(
        "celery", "a Celery worker on the app's own Redis (app.json), a task at /tasks/",
        requirements=("celery[redis]>=5.4,<6",),
        settings=('CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL") or '
                  'os.environ.get("REDIS_URL", "redis://localhost:6379/0")\n'
                  'CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND") or '
                  "CELERY_BROKER_URL\n"
                  "CELERY_RESULT_EXPIRES = 3600\n"
                  "CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True\n"),
        url_imports=(f"from {PROJECT} import task_views",),
        urls=('path("tasks/", task_views.start, name="tasks"),',
              'path("tasks/<str:token>/", task_views.result, name="task-result"),'),
        procfile=(f"worker: celery -A {PROJECT} worker --loglevel=info --concurrency=2",),
        files=((f"{PROJECT}/celery.py", CELERY_APP), (f"{PROJECT}/tasks.py", CELERY_TASKS),
               (f"{PROJECT}/task_views.py", CELERY_VIEWS),
               ("templates/tasks.html", TASKS_TEMPLATE)),
        addons=("heroku-redis",),
        formation=(("worker", 1),),
    ),
]}

DATABASES = ("sqlite", "postgres")
POSTGRES_REQUIREMENT = "psycopg[binary]>=3.2,<4"

# PEP 508 names (letters, digits, . _ -, starting and ending with a letter or digit),
# optional extras, an optional exact or lower-bound version of digits and dots.
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,98}[A-Za-z0-9])?"
PIP_SPEC = re.compile(rf"pip:(?P<req>{_NAME}(?:\[{_NAME}(?:,{_NAME}){{0,9}}\])?"
                      r"(?:(?:==|>=|~=)[0-9]{1,9}(?:\.[0-9]{1,9}){0,4})?)")
# https only, a host name, a path of plain segments, an optional @ref and #egg=NAME.
GIT_SPEC = re.compile(
    r"(?P<req>git\+https://(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}"
    r"(?:/[A-Za-z0-9_.~-]{1,100}){1,8}(?:@[A-Za-z0-9_./-]{1,100})?"
    rf"(?:#egg={_NAME})?)")
MAX_SPECS = 20


@dataclasses.dataclass(frozen=True)
class Choice:
    """What a project is made with: named entries, extra requirements, the database."""

    entries: tuple[Entry, ...]
    extra_requirements: tuple[str, ...]
    database: str = "sqlite"

    @property
    def requirements(self) -> list[str]:
        lines = [DJANGO]
        if self.database == "postgres":
            lines.append(POSTGRES_REQUIREMENT)
        for entry in self.entries:
            lines += [r for r in entry.requirements if r not in lines]
        lines += [r for r in self.extra_requirements if r not in lines]
        return lines

    @property
    def keys(self) -> list[str]:
        return [e.key for e in self.entries]


def check_spec(spec: str) -> Entry | str:
    """A named entry, or the requirement line a `pip:`/`git+https:` spec stands for."""
    if spec in ENTRIES:
        return ENTRIES[spec]
    shown = spec if len(spec) <= 80 and spec.isprintable() else repr(spec[:80])
    if spec.startswith("pip:"):
        match = PIP_SPEC.fullmatch(spec)
        if match is None:
            raise UsageError(f"{shown} is not a package spec Opus takes: pip:NAME, "
                             "pip:NAME==VERSION or pip:NAME[EXTRA]>=VERSION (a PyPI name "
                             "and digits only; no options, markers or spaces)")
        return match.group("req")
    if spec.startswith("git+"):
        match = GIT_SPEC.fullmatch(spec)
        if match is None or ".." in spec:
            raise UsageError(f"{shown} is not a git spec Opus takes: "
                             "git+https://HOST/OWNER/REPO[.git][@REF][#egg=NAME] (https "
                             "only; no options, spaces or credentials)")
        return match.group("req")
    raise UsageError(f"unknown entry {shown}; choose from {', '.join(ENTRIES)}, or "
                     "pip:PACKAGE[==VERSION] or git+https://… (`opus init --list`)")


def choose(specs: list[str], database: str = "sqlite") -> Choice:
    """Check every spec (each may be a comma-separated list) and the database."""
    if database not in DATABASES:
        raise UsageError(f"--db takes {' or '.join(DATABASES)}, not {database!r}")
    words = [w for spec in specs for w in spec.split(",") if w != ""]
    if len(words) > MAX_SPECS:
        raise UsageError(f"at most {MAX_SPECS} entries and packages at once")
    entries: list[Entry] = []
    extra: list[str] = []
    for word in words:
        found = check_spec(word)
        if isinstance(found, Entry):
            if found not in entries:
                entries.append(found)
        elif found not in extra:
            extra.append(found)
    # A fixed order, whatever the order given; an entry that serves `/` (Wagtail's
    # catch-all urls) goes last.
    entries.sort(key=lambda e: (e.owns_root, list(ENTRIES).index(e.key)))
    return Choice(tuple(entries), tuple(extra), database)


def listing() -> list[str]:
    """`opus init --list`."""
    lines = ["Entries for `opus init --with ENTRY` (several: --with auth,api):"]
    lines += [f"  {e.key:<8} {e.summary}" for e in ENTRIES.values()]
    lines += ["Any other reusable app: --with pip:PACKAGE[==VERSION] or "
              "--with git+https://HOST/OWNER/REPO[@REF] (add it to INSTALLED_APPS yourself).",
              f"Databases: --db {'|'.join(DATABASES)} (postgres: Opus's pg:create gives the "
              "app its DATABASE_URL)."]
    return lines
