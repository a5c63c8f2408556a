"""WSGI entry point for mod_wsgi-express (``--application-type module opus_runtime.wsgi``).

Reads ``OPUS_ENV_FILE`` (JSON object of config vars, merged into os.environ), ``OPUS_APP_ROOT``
(manage.py's directory, put first on sys.path), ``OPUS_USER_SETTINGS_MODULE`` (set for Django
apps: settings then load through :mod:`opus_runtime.settings`) and ``OPUS_WSGI_MODULE`` (the
module served) and ``OPUS_WSGI_CALLABLE`` (its callable,
``application`` unless set). See :mod:`opus_runtime.bootstrap`.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from opus_runtime.bootstrap import prepare

_module, _callable = prepare(os.environ, sys.path)
application: Any = getattr(importlib.import_module(_module), _callable)
