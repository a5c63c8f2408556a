"""Opus: a self-hosted, Heroku-style platform for Python web projects."""

__version__ = "0.1.0"
