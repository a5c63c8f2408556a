"""Opus's runtime helpers, copied into each app's venv: the Django settings overlay
(``opus_runtime.settings``) and the WSGI entry point for mod_wsgi-express (``opus_runtime.wsgi``).
Stdlib only, plus Django when the app uses it.
"""
