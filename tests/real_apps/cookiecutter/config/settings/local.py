from .base import *  # noqa: F403
from .base import env

# GENERAL
DEBUG = True
SECRET_KEY = env("DJANGO_SECRET_KEY", default="local-development-only")
ALLOWED_HOSTS = ["localhost", "0.0.0.0", "127.0.0.1"]  # noqa: S104
