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

The broker is CELERY_BROKER_URL, else REDIS_URL (what a Redis add-on sets).
\"\"\"

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("config")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
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
        "celery", "Celery workers (the Procfile's worker:), broker from REDIS_URL",
        requirements=("celery[redis]>=5.4,<6",),
        settings=('CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL") or '
                  'os.environ.get("REDIS_URL", "redis://localhost:6379/0")\n'
                  "CELERY_TASK_IGNORE_RESULT = True\n"),
        procfile=(f"worker: celery -A {PROJECT} worker --loglevel=info",),
        files=((f"{PROJECT}/celery.py", CELERY_APP),),
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
    # A fixed order, whatever the order given: Wagtail's catch-all urls go last.
    entries.sort(key=lambda e: list(ENTRIES).index(e.key))
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
