"""Dex, a real OpenID Connect provider, for the login tests: writes its config (memory storage,
one static client, static password users with groups), runs the binary that scripts/build-dex
built on 127.0.0.1, waits for its discovery document, and stops it. Tests that need it are
skipped, with the command to run, when Dex is not built.

Always 127.0.0.1, never localhost: the hub's OAuth state cookie is set for the host the browser
used, and a redirect that switches between the two names loses it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from spawner_ext.up import free_port

ROOT = Path(__file__).parents[1]
BUILD_SCRIPT = ROOT / "scripts" / "build-dex"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0

PASSWORD = "correct-horse-battery"
"""Every test user's password."""
PASSWORD_HASH = "$2a$10$M0CI1YaCCT4eRW.ll0XfkOKmexWVYGkKvkntXQ1uFMMiSGvcNrANG"
"""bcrypt (cost 10) of PASSWORD, made once with Go's golang.org/x/crypto/bcrypt (Dex's own): the
`bcrypt` Python package is not a test dependency, and Python's `crypt` warns and is gone in 3.13."""

SCOPES = ("openid", "profile", "email", "groups")
"""What the hub asks Dex for; `groups` is the scope that makes Dex emit the groups claim."""


class DexError(Exception):
    """Dex did not start, or answered what it should not."""


@dataclass(frozen=True)
class DexUser:
    """A static password user. Dex asks for the email address at login; the hub takes `name`
    (the preferred_username claim) as the JupyterHub user name."""

    name: str
    groups: tuple[str, ...] = ()

    @property
    def email(self) -> str:
        return f"{self.name}@example.org"


@dataclass(frozen=True)
class DexClient:
    """The hub as Dex's one static OAuth client."""

    client_id: str
    client_secret: str
    redirect_uri: str


def dex_config(
    issuer: str, port: int, client: DexClient, users: Iterable[DexUser]
) -> dict[str, Any]:
    """Dex's configuration (its YAML, as JSON is YAML too). Pure."""
    return {
        "issuer": issuer,
        "storage": {"type": "memory"},
        "web": {"http": f"127.0.0.1:{port}"},
        "logger": {"level": "debug", "format": "text"},
        "oauth2": {
            "responseTypes": ["code"],
            "skipApprovalScreen": True,
            # lets tests ask for tokens with a password grant, without a browser
            "passwordConnector": "local",
        },
        "staticClients": [
            {
                "id": client.client_id,
                "secret": client.client_secret,
                "name": "gpuhub",
                "redirectURIs": [client.redirect_uri],
            }
        ],
        "enablePasswordDB": True,
        "staticPasswords": [
            {
                "email": user.email,
                "hash": PASSWORD_HASH,
                "username": user.name,
                "preferredUsername": user.name,
                "userID": f"id-{user.name}",
                "groups": list(user.groups),
            }
            for user in users
        ],
    }


def dex_binary() -> Path:
    """The Dex binary scripts/build-dex built; skips the test when there is none."""
    done = subprocess.run(
        [str(BUILD_SCRIPT), "--print-bin-dir"], check=True, stdout=subprocess.PIPE, text=True
    )
    binary = Path(done.stdout.strip()) / "dex"
    if not os.access(binary, os.X_OK):
        pytest.skip(f"Dex is not built ({binary} is missing); run: scripts/build-dex (minutes)")
    return binary


class Dex:
    """One Dex on a fixed port of 127.0.0.1, started and restarted with a given set of users.
    Memory storage: a restart forgets every session and token, and knows only the new users."""

    def __init__(self, workdir: Path, client: DexClient, binary: Path | None = None) -> None:
        self.workdir = workdir
        self.client = client
        self.binary = binary or dex_binary()
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}/dex"
        self.config_file = workdir / "dex.yaml"
        self.log_file = workdir / "dex.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    def start(self, users: Iterable[DexUser]) -> None:
        if self.proc is not None:
            raise DexError("Dex already runs; stop it first")
        config = dex_config(self.issuer, self.port, self.client, users)
        self.config_file.write_text(json.dumps(config, indent=2) + "\n")
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(self.binary), "serve", str(self.config_file)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while self.discovery() is None:
            if self.proc.poll() is not None:
                self.proc = None
                raise DexError(f"Dex exited at start:\n{self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise DexError(f"Dex did not answer {self.discovery_url}:\n{self.log()}")
            time.sleep(0.2)

    def discovery(self) -> dict[str, Any] | None:
        """Dex's discovery document; None while it does not answer."""
        try:
            response = requests.get(self.discovery_url, timeout=5)
        except requests.ConnectionError:
            return None
        if response.status_code != 200:
            return None
        document: dict[str, Any] = response.json()
        return document

    def stop(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        with suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def restart(self, users: Iterable[DexUser]) -> None:
        """Stop, then start on the same port with `users`: how a change at the provider looks."""
        self.stop()
        self.start(users)

    def log(self, lines: int = 40) -> str:
        try:
            text = self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            return "(no dex.log)"
        return "--- end of dex.log ---\n" + "\n".join(text[-lines:])

    def password_grant(self, user: DexUser, password: str = PASSWORD) -> dict[str, Any]:
        """Tokens for `user` by the resource owner password grant (no browser)."""
        response = requests.post(
            f"{self.issuer}/token",
            data={
                "grant_type": "password",
                "username": user.email,
                "password": password,
                "scope": " ".join(SCOPES),
            },
            auth=(self.client.client_id, self.client.client_secret),
            timeout=10,
        )
        if response.status_code != 200:
            raise DexError(
                f"password grant for {user.email}: {response.status_code} {response.text}"
            )
        tokens: dict[str, Any] = response.json()
        return tokens


@contextmanager
def running_dex(workdir: Path, client: DexClient, users: Iterable[DexUser]) -> Iterator[Dex]:
    """A started Dex, stopped afterwards even on failure."""
    dex = Dex(workdir, client)
    try:
        dex.start(users)
        yield dex
    finally:
        dex.stop()


def log_in_in_browser(
    page: Any,
    hub_url: str,
    dex: Dex,
    user: DexUser,
    screenshot: Callable[[Any, str], None],
    step: str,
) -> None:
    """From the hub's login page through Dex's login form (Playwright `page`), until the browser
    is back on the hub; `screenshot(page, name)` at the hub's login page and Dex's form."""
    page.goto(f"{hub_url}hub/login")
    screenshot(page, f"{step}-1-hub-login")
    page.click("text=Sign in with Dex")
    page.wait_for_url(f"{dex.issuer}/auth/local/login**")
    page.fill("input[name=login]", user.email)
    page.fill("input[name=password]", PASSWORD)
    screenshot(page, f"{step}-2-dex-login")
    page.click("#submit-login")
    page.wait_for_url(f"{hub_url}hub/**")
