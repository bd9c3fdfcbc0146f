"""A password for each user, for `gpuhub up --passwords FILE`: the file (a YAML mapping, one
`name: password` line per user) read with every problem as FILE:LINE:COL, and
PasswordFileAuthenticator, which lets each user it names log in with their own password and
nobody else (the shared password of `gpuhub up` lets anyone who has it be anyone).

`parse_passwords` is pure; `read_passwords` reads the file and checks who may read it."""

from __future__ import annotations

import stat
from collections.abc import Mapping
from hmac import compare_digest
from pathlib import Path
from typing import Any

from jupyterhub.auth import Authenticator
from traitlets import Unicode, validate

from ..catalog.problems import Problem
from ..catalog.yamlsource import parse_yaml

MIN_LENGTH = 8
"""The shortest password accepted (as JupyterHub's SharedPasswordAuthenticator)."""
EXAMPLE = "ada: a-password-of-her-own"


class PasswordFileError(ValueError):
    """The passwords file cannot be used; every problem, each at FILE:LINE:COL."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = tuple(sorted(problems))
        super().__init__("\n".join(str(p) for p in self.problems))


def parse_passwords(text: str, file: str) -> dict[str, str]:
    """{user name: password} of a passwords file's text. Raises PasswordFileError naming every
    problem (never a password)."""
    data, source, problems = parse_yaml(text, file)
    if data is None and not problems:
        problems.append(Problem(file, 1, 1, "", f"no users: write one line per user, {EXAMPLE}"))
    elif data is not None and not isinstance(data, dict):
        problems.append(
            source.problem((), f"must map user names to passwords, one line per user: {EXAMPLE}")
        )
    found: dict[str, str] = {}
    for name, password in (data if isinstance(data, dict) else {}).items():
        loc = (name,)
        if not name.strip() or any(c.isspace() for c in name):
            problems.append(source.problem(loc, "a user name has no spaces", key=True))
        elif name != name.lower():
            problems.append(
                source.problem(
                    loc,
                    f"JupyterHub lowercases user names: write {name.lower()!r}",
                    key=True,
                )
            )
        if password is None or password == "":
            problems.append(source.problem(loc, f"no password: write {name}: PASSWORD"))
        elif not isinstance(password, str):
            problems.append(
                source.problem(
                    loc,
                    f"YAML reads this password as a {type(password).__name__}, not text: put it "
                    'in quotes ("...")',
                )
            )
        elif len(password) < MIN_LENGTH:
            problems.append(
                source.problem(
                    loc,
                    f"the password has {len(password)} characters; use {MIN_LENGTH} or more",
                )
            )
        else:
            found[name] = password
    if problems:
        raise PasswordFileError(problems)
    return found


def read_passwords(path: Path) -> dict[str, str]:
    """The passwords of the file at `path`. Raises PasswordFileError when it cannot be read,
    when other accounts may read it, or for its content."""
    shown = str(path)
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
        raise PasswordFileError([Problem(shown, 1, 1, "", f"cannot read it: {why}")]) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise PasswordFileError(
            [
                Problem(
                    shown,
                    1,
                    1,
                    "",
                    f"other accounts may read it (mode {stat.filemode(mode)}); run: chmod 600 "
                    f"{shown}",
                )
            ]
        )
    return parse_passwords(text, shown)


class PasswordFileAuthenticator(Authenticator):  # type: ignore[misc]
    """Each user named in `passwords_file` logs in with their own password; any other name is
    refused, except `admin_users` the file does not name, with `admin_password`. The file is read
    when the hub starts: a change takes a restart. Set `allow_all = True` (only the file's users
    can log in anyway) or list `allowed_users`."""

    passwords_file = Unicode(
        "",
        config=True,
        help="A YAML file of `name: password` lines, one per user (8 characters or more each; "
        "readable by the hub's account only, mode 0600). Required. `gpuhub up --passwords FILE` "
        "sets it.",
    )
    admin_password = Unicode(
        "",
        config=True,
        help="The password of the `admin_users` that `passwords_file` does not name ('': they "
        "cannot log in). `gpuhub up` generates one for the user `admin` at every start and "
        "prints it.",
    )

    @validate("admin_password")
    def _validate_admin_password(self, proposal: Any) -> str:
        value: str = proposal.value
        if value and len(value) < MIN_LENGTH:
            raise ValueError(
                f"PasswordFileAuthenticator.admin_password must have {MIN_LENGTH} characters or "
                f"more, not {len(value)}"
            )
        return value

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not self.passwords_file:
            raise ValueError(
                "set c.PasswordFileAuthenticator.passwords_file to a file of `name: password` "
                "lines (gpuhub up --passwords FILE)"
            )
        self.passwords: Mapping[str, str] = read_passwords(Path(self.passwords_file))

    def password_of(self, name: str) -> str | None:
        """The password `name` logs in with; None for a name that may not log in."""
        if name in self.passwords:
            return self.passwords[name]
        if name in self.admin_users and self.admin_password:
            return str(self.admin_password)
        return None

    async def authenticate(self, handler: Any, data: Mapping[str, str]) -> dict[str, Any] | None:
        name = self.normalize_username(data.get("username", ""))
        expected = self.password_of(name)
        given = data.get("password", "").encode()
        # Compared as bytes (compare_digest refuses non-ASCII text), and compared even for an
        # unknown name, so the time taken does not tell which names exist.
        matches = compare_digest(given, (expected or "\0").encode())
        return {"name": name} if expected is not None and matches else None
