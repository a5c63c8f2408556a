"""Opus's Heroku-style Python buildpack: detect, compile and release for Django apps.

The ``bin/`` scripts are thin wrappers around :mod:`opus_buildpack.main`; every other module
holds one concern and keeps its parsing pure so it can be unit-tested without subprocesses.
"""
