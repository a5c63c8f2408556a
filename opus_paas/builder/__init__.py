"""The project builder (`opus init`, the dashboard's New project page): a new Django
project with chosen reusable apps, made, committed and pushed as its first release.

`catalogue` is pure data and validation, `make` writes the project, `deploy` creates
the app and pushes with real git (over SSH, or on this host for the dashboard).
"""
