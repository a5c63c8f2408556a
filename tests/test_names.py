"""Name patterns: every hostile value is rejected with a message, never cleaned."""

from __future__ import annotations

import pytest

from opus_paas import names
from opus_paas.errors import InvalidName

HOSTILE = [
    "", "-app", "app-", "App", "a" * 31, "my_app", "../etc", "..", "app;rm -rf /",
    "app\nother", "$(id)", "`id`", "app name", "app/../x", "app.git", "ápp", "app\0",
    "--help", "a--", "opus",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_app_names_are_rejected(value: str) -> None:
    with pytest.raises(InvalidName) as info:
        names.check_app_name(value)
    assert "app name" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("value", ["a", "myapp", "api-2", "x" * 30, "a1-b2"])
def test_good_app_names_pass(value: str) -> None:
    assert names.check_app_name(value) == value


@pytest.mark.parametrize("path,app", [("/myapp.git", "myapp"), ("myapp.git", "myapp"),
                                      ("/myapp", "myapp"), ("myapp.git/", "myapp")])
def test_repo_paths_name_the_app(path: str, app: str) -> None:
    assert names.app_from_repo_path(path) == app


@pytest.mark.parametrize("path", ["/../etc/passwd", "/a/b.git", "//myapp.git", "/myapp.git.git",
                                  "/MyApp.git", "/~root.git", "/myapp.git\n", "/.git",
                                  "/opus.git", "/" + "a" * 40 + ".git"])
def test_hostile_repo_paths_are_rejected(path: str) -> None:
    with pytest.raises(InvalidName):
        names.app_from_repo_path(path)


@pytest.mark.parametrize("value", ["alice", "bob_2", "c-d"])
def test_good_user_names(value: str) -> None:
    assert names.check_user_name(value) == value


@pytest.mark.parametrize("value", ["", "Alice", "1bob", "a;b", "a b", "a\n", "x" * 33, "root$"])
def test_hostile_user_names_are_rejected(value: str) -> None:
    with pytest.raises(InvalidName):
        names.check_user_name(value)


@pytest.mark.parametrize("value", ["DATABASE_URL", "_X", "a1"])
def test_good_config_keys(value: str) -> None:
    assert names.check_config_key(value) == value


@pytest.mark.parametrize("value", ["", "1X", "A-B", "A B", "A=B", "A\nB", "Ä"])
def test_hostile_config_keys_are_rejected(value: str) -> None:
    with pytest.raises(InvalidName):
        names.check_config_key(value)


@pytest.mark.parametrize("value", ["web", "worker.2", "a_b-c"])
def test_good_process_types(value: str) -> None:
    assert names.check_process_type(value) == value


@pytest.mark.parametrize("value", ["", "we b", "web;id", "web/x", "x" * 64])
def test_hostile_process_types_are_rejected(value: str) -> None:
    with pytest.raises(InvalidName):
        names.check_process_type(value)


@pytest.mark.parametrize("value", ["example.com", "a.b-c.localhost", "x"])
def test_good_domains(value: str) -> None:
    assert names.check_domain(value) == value


@pytest.mark.parametrize("value", ["", "-a.com", "a..com", "A.com", "a.com.", "a_b.com",
                                   "a.com\nServerAlias evil", "a com", "*.a.com"])
def test_hostile_domains_are_rejected(value: str) -> None:
    with pytest.raises(InvalidName):
        names.check_domain(value)


@pytest.mark.parametrize("ref", [
    b"refs/heads/main", b"refs/heads/release/v2", b"refs/tags/v1.0", b"refs/heads/a+b@c=d",
])
def test_ordinary_refs_are_accepted(ref: bytes) -> None:
    assert names.check_ref_name(ref) == ref.decode()


@pytest.mark.parametrize("ref", [
    b"HEAD", b"refs/heads/HEAD", b"main", b"refs/remotes/origin/main", b"refs/notes/x",
    b"refs/heads/", b"refs/heads/-rf", b"refs/heads/--upload-pack=touch",
    b"refs/heads/../../config", b"refs/heads/a..b", b"refs/heads/.hidden",
    b"refs/heads/a/.b", b"refs/heads/x.lock", b"refs/heads/x.lock/y", b"refs/heads/a//b",
    b"refs/heads/a/", b"refs/heads/a.", b"refs/heads/a@{1}", b"refs/heads/a b",
    b"refs/heads/a\nb", b"refs/heads/a\x1b[31m", b"refs/heads/caf\xc3\xa9",
    b"refs/heads/\xff", b"refs/heads/a;rm -rf", b"refs/heads/$(id)", b"refs/heads/`id`",
    b"refs/heads/a~1", b"refs/heads/a^", b"refs/heads/a:b", b"refs/heads/a?", b"refs/heads/a*",
    b"refs/heads/a[", b"refs/heads/a\\b", b"refs/heads/" + b"x" * 300,
])
def test_hostile_refs_are_refused(ref: bytes) -> None:
    with pytest.raises(InvalidName) as raised:
        names.check_ref_name(ref)
    assert "\n" not in raised.value.message and "\x1b" not in raised.value.message


@pytest.mark.parametrize("branch", ["main", "production", "release/2026-11"])
def test_branch_names(branch: str) -> None:
    assert names.check_branch_name(branch) == branch
