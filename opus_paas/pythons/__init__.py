"""Any Python an app asks for: interpreters fetched on demand (python-build-standalone,
through `uv python install`), verified, installed once per host where every app's user
can read them and none can write; and mod_wsgi built once per interpreter into a
read-only wheelhouse that builds install from."""
