"""`gpuhub up --passwords FILE`: each user's own password. The file's problems at FILE:LINE:COL
(never echoing a password), a file other accounts may read refused, and the authenticator that
lets each named user in with their own password only. The login through a real hub is
tests/integration/test_local_hub.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from traitlets.config import Config

from spawner_ext.up.passwords import (
    PasswordFileAuthenticator,
    PasswordFileError,
    parse_passwords,
    read_passwords,
)

GOOD = """\
# one line per user
ada: ada-has-her-own
lin: "lin: with a colon"
grace: 'g r a c e !'
"""


def test_a_mapping_of_names_to_passwords() -> None:
    assert parse_passwords(GOOD, "pw.yaml") == {
        "ada": "ada-has-her-own",
        "lin": "lin: with a colon",
        "grace": "g r a c e !",
    }


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "pw.yaml:1:1: no users: write one line per user, ada: a-password-of-her-own"),
        ("- ada\n", "pw.yaml:1:1: must map user names to passwords"),
        ("ada: short\n", "pw.yaml:1:6: ada: the password has 5 characters; use 8 or more"),
        ("ada:\n", "pw.yaml:1:5: ada: no password: write ada: PASSWORD"),
        ("ada: 12345678\n", "pw.yaml:1:6: ada: YAML reads this password as a int, not text"),
        ("Ada: ada-has-her-own\n", "pw.yaml:1:1: Ada: JupyterHub lowercases user names"),
        ("ada lovelace: ada-has-her-own\n", "pw.yaml:1:1: ada lovelace: a user name has no"),
        (
            "ada: ada-has-her-own\nlin: lin-has-his-own\nada: another-one\n",
            "pw.yaml:3:1: ada: duplicate key 'ada' (first set at line 1)",
        ),
        ("ada: [unclosed\n", "pw.yaml:2:1: YAML syntax error"),
    ],
)
def test_each_problem_names_file_line_and_column(text: str, problem: str) -> None:
    with pytest.raises(PasswordFileError) as raised:
        parse_passwords(text, "pw.yaml")
    assert problem in str(raised.value)
    for secret in ("short", "12345678", "another-one"):
        assert secret not in str(raised.value), "a password is never shown"


def test_every_problem_at_once() -> None:
    with pytest.raises(PasswordFileError) as raised:
        parse_passwords("ada: short\nlin: ok-password\ngrace: 1\n", "pw.yaml")
    assert [p.line for p in raised.value.problems] == [1, 3]


def test_a_file_other_accounts_may_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "pw.yaml"
    path.write_text(GOOD)
    path.chmod(0o644)
    with pytest.raises(PasswordFileError, match=f"{path}:1:1: other accounts may read it"):
        read_passwords(path)
    path.chmod(0o600)
    assert read_passwords(path)["ada"] == "ada-has-her-own"
    with pytest.raises(PasswordFileError, match="cannot read it: No such file"):
        read_passwords(tmp_path / "missing.yaml")


def authenticator(tmp_path: Path, admin_password: str = "") -> PasswordFileAuthenticator:
    path = tmp_path / "pw.yaml"
    path.write_text(GOOD + 'ünï: "pässwörd-ünïcode"\n')
    path.chmod(0o600)
    c = Config()
    c.PasswordFileAuthenticator.passwords_file = str(path)
    c.PasswordFileAuthenticator.admin_password = admin_password
    c.PasswordFileAuthenticator.admin_users = {"admin"}
    return PasswordFileAuthenticator(config=c)


async def test_each_user_logs_in_with_their_own_password_only(tmp_path: Path) -> None:
    auth = authenticator(tmp_path, admin_password="an-admin-password-of-32-characters")

    async def login(name: str, password: str) -> str | None:
        found = await auth.authenticate(None, {"username": name, "password": password})
        return None if found is None else str(found["name"])

    assert await login("ada", "ada-has-her-own") == "ada"
    assert await login("ADA", "ada-has-her-own") == "ada", "names are normalized"
    assert await login("lin", "ada-has-her-own") is None, "not another user's password"
    assert await login("zed", "ada-has-her-own") is None, "no name outside the file"
    assert await login("ünï", "pässwörd-ünïcode") == "ünï"
    assert await login("ada", "pässwörd-ünïcode") is None
    assert await login("admin", "an-admin-password-of-32-characters") == "admin"
    assert await login("ada", "an-admin-password-of-32-characters") is None
    assert await login("admin", "ada-has-her-own") is None


async def test_without_an_admin_password_admin_logs_in_only_if_the_file_names_it(
    tmp_path: Path,
) -> None:
    auth = authenticator(tmp_path)
    assert await auth.authenticate(None, {"username": "admin", "password": ""}) is None


def test_a_bad_file_stops_the_hub_with_its_problems(tmp_path: Path) -> None:
    path = tmp_path / "pw.yaml"
    path.write_text("ada: short\n")
    path.chmod(0o600)
    c = Config()
    c.PasswordFileAuthenticator.passwords_file = str(path)
    with pytest.raises(PasswordFileError, match=f"{path}:1:6: ada: the password has 5"):
        PasswordFileAuthenticator(config=c)
    with pytest.raises(ValueError, match=r"set c\.PasswordFileAuthenticator\.passwords_file"):
        PasswordFileAuthenticator(config=Config())
