"""The apps' data: a Postgres server Opus runs (or is given), a database per app, and
backups of every app's database (Postgres or the default SQLite file), taken on demand,
on a schedule, before each release command and when an app is destroyed."""
