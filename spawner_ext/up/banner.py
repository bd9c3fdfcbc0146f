"""What `gpuhub up` prints when the hub answers: URL, password, users, GPUs. Pure."""

from __future__ import annotations

from pathlib import Path

from ..catalog import Catalog
from .config import ADMIN_USER, UpSettings, _url_host


def public_url(ip: str, port: int, hostname: str) -> str:
    """The URL people open: `hostname` stands in for an ip that means every interface."""
    host = hostname if ip in ("", "0.0.0.0", "::") else ip
    return f"http://{_url_host(host)}:{port}/"


def suggested_users(catalog: Catalog) -> list[tuple[str, str]]:
    """(user name, what they get) for the users the catalog names, then anybody else."""
    teams: dict[str, list[str]] = {}
    for key, team in catalog.teams.items():
        for user in team.users:
            teams.setdefault(user, []).append(key)
    out: list[tuple[str, str]] = []
    for user, keys in teams.items():
        if len(keys) == 1:
            out.append((user, f"team {keys[0]}"))
        else:
            out.append((user, f"teams {', '.join(keys)}: chooses the team to charge"))
    out.append(("any other name", "no team: CPU profiles only"))
    return out


def banner(s: UpSettings, catalog: Catalog, url: str, log_file: Path, gpus: str) -> str:
    """What `gpuhub up` prints once the hub answers: where, how to log in, what it runs on."""
    users = suggested_users(catalog)
    if s.passwords_file is not None:  # nobody else logs in
        users[-1] = ("others in the file", users[-1][1])
    width = max(len(name) for name, _ in users)
    if s.passwords_file is not None:
        way, verb = "password-file login", "Log in as"
        login = [
            f"a user named in {s.passwords_file}, with that user's own password; no other",
            "name can log in.",
        ]
    else:
        way, verb = "shared-password login", "Log in with"
        login = [
            "any user name and this password (a new one at every start):",
            f"  Password: {s.password}",
            f"Anyone who has this password can log in as any user but {ADMIN_USER!r}, team leads",
            "included (they read their teams' usage and cost). To give each person a password",
            "of their own, start with --passwords FILE (one `name: password` line per user).",
        ]
    if s.extra_config is None:
        login[0] = f"{verb} {login[0]}"
    else:  # it may set another authenticator: only the hub knows which, once it has read it
        login.insert(0, f"Log in as {s.extra_config} sets up. If it keeps gpuhub's {way}:")
    lines = [
        "",
        f"gpuhub is running at {url}",
        "",
        *login,
        "",
        "User names from the catalog:",
        *(f"  {name:<{width}}  {what}" for name, what in users),
    ]
    admin = []
    if s.admin_password:
        admin = [
            f"Admin: user name {ADMIN_USER!r}, password: {s.admin_password}",
            f"  (for {ADMIN_USER!r} only: whoever has it administers the hub and reads every "
            "team's usage)",
        ]
    elif s.passwords_file is not None:
        admin = [f"Admin: user name {ADMIN_USER!r}, with its password in {s.passwords_file}"]
    if admin:
        lines += [
            "",
            *([f"With the {way}:"] if s.extra_config is not None else []),
            *admin,
            f"  (admin page: {url}hub/admin)",
        ]
    lines += [
        "",
        f"GPUs:  {gpus}",
        f"State: {s.state_dir} (databases, cookie secret, users' files)",
        f"Log:   {log_file}",
        "",
        "Stop with Ctrl-C.",
        "",
    ]
    return "\n".join(lines)


# --- the command (files, ports, processes) ------------------------------------------------------
