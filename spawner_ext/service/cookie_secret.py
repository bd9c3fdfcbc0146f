"""The service's cookie secret, which signs the logins of usage-page readers: the same across
restarts, so a restart logs nobody out. It comes from GPUHUB_SERVICE_COOKIE_SECRET (Kubernetes: a
Secret of helm-values/gpuhub/), or from a file that is made once with random content (`gpuhub
up`: in its state directory). `parse` is pure; `load` reads and writes the file."""

from __future__ import annotations

import binascii
import contextlib
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path

ENV = "GPUHUB_SERVICE_COOKIE_SECRET"
SECRET_BYTES = 32
"""A new secret's size; a given one must have at least this many bytes."""


class CookieSecretError(ValueError):
    """The secret given cannot be used; the message says where it came from and what to do."""


def parse(text: str, where: str, fix: str) -> bytes:
    """The secret in `text`: hex digits, at least SECRET_BYTES bytes (as JupyterHub's own
    cookie_secret_file). `where` names its source and `fix` what to do, for the error."""
    try:
        secret = binascii.a2b_hex(text.strip())
    except (binascii.Error, ValueError):
        raise CookieSecretError(
            f"{where} is not a cookie secret: it must hold {2 * SECRET_BYTES} or more hex digits "
            f"(0-9, a-f) and nothing else; {fix}"
        ) from None
    if len(secret) < SECRET_BYTES:
        raise CookieSecretError(
            f"{where} holds {len(secret)} bytes; a cookie secret needs {SECRET_BYTES} or more "
            f"({2 * SECRET_BYTES} hex digits); {fix}"
        )
    return secret


def load(path: Path | None, env: Mapping[str, str]) -> bytes | None:
    """The secret of `env`'s GPUHUB_SERVICE_COOKIE_SECRET if set, else of the file `path`, which
    is created (mode 0600, random content) if it does not exist. None when neither is given (the
    caller makes one that lasts until it exits). Raises CookieSecretError."""
    given = env.get(ENV, "")
    if given.strip():
        return parse(
            given,
            ENV,
            f"set it to the output of `openssl rand -hex {SECRET_BYTES}` (on Kubernetes it comes "
            "from the Secret gpuhub-service of helm-values/gpuhub/)",
        )
    if path is None:
        return None
    fix = (
        f"delete {path} to have a new one made at the next start (readers of the usage page log "
        f"in again), or write the output of `openssl rand -hex {SECRET_BYTES}` into it"
    )
    try:
        text = _read_or_create(path)
    except OSError as exc:
        raise CookieSecretError(
            f"cannot read or create the cookie secret file {path}: {exc.strerror}; make its "
            "directory writable by the hub's account, or give another --cookie-secret-file"
        ) from None
    return parse(text, f"the cookie secret file {path}", fix)


def _read_or_create(path: Path) -> str:
    """The file's text; a new file of random hex digits first if there is none. Made under
    another name and linked into place, so a concurrent start reads a whole file or makes its
    own; refused when other accounts may read it (like JupyterHub's cookie_secret_file)."""
    if not path.exists():
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_hex(SECRET_BYTES) + "\n")
            with contextlib.suppress(FileExistsError):  # another start made it: use theirs
                os.link(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise CookieSecretError(
            f"the cookie secret file {path} may be read or written by other accounts (mode "
            f"{stat.filemode(mode)}); run: chmod 600 {path}"
        )
    return path.read_text()
