"""Releases live and running: pushes, deploys, supervisor, processes, logs, metrics."""
