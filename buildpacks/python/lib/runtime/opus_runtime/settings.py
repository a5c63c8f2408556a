"""Django settings for an Opus app: the app's own settings with the platform's overrides.

Loaded as ``DJANGO_SETTINGS_MODULE=opus_runtime.settings``; the app's module is named by
``OPUS_USER_SETTINGS_MODULE``. See :mod:`opus_runtime.overlay` for what is overridden.
"""

from __future__ import annotations

import importlib
import os

from opus_runtime.overlay import build_overrides

_user_module_name = os.environ.get("OPUS_USER_SETTINGS_MODULE", "")
if not _user_module_name:
    raise RuntimeError(
        "OPUS_USER_SETTINGS_MODULE is not set: set it to the app's settings module "
        "(e.g. mysite.settings), or set DJANGO_SETTINGS_MODULE to that module directly."
    )
_user_module = importlib.import_module(_user_module_name)
_user_settings = {name: getattr(_user_module, name) for name in dir(_user_module) if name.isupper()}
globals().update(_user_settings)
globals().update(build_overrides(os.environ, _user_settings))
