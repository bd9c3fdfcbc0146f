"""Which install a thing belongs to: one hub with its gpuhub service. Several installs may share a
Kubernetes cluster (staging and production, two departments) or one billing database; each makes,
bills, stops and deletes only what carries its own name (the `gpuhub.io/install` label, a usage
session's `install`). Pure: names are checked and derived here, used elsewhere."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping

INSTALL_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?")
"""A DNS label of at most 40 characters: valid as a label value and inside a namespace name."""
LOCAL = "local"
"""The default install of a hub that does not run on Kubernetes."""


class InstallError(ValueError):
    """An install name that cannot be used; the message says what to write."""


def checked_install(name: str) -> str:
    """`name` if it can name an install, else InstallError."""
    if not INSTALL_NAME.fullmatch(name):
        raise InstallError(
            f"the install name {name!r} is not valid: use 1 to 40 lowercase letters, digits and "
            "'-', starting and ending with a letter or digit (e.g. prod or staging-gpu)"
        )
    return name


def default_install(environ: Mapping[str, str]) -> str:
    """The install's name when none is configured: on Kubernetes the hub's namespace, with the
    Helm release when it differs (z2jh sets POD_NAMESPACE and HELM_RELEASE_NAME on the hub's
    pod); `local` elsewhere. Stable across restarts and upgrades of the same release."""
    namespace = environ.get("POD_NAMESPACE", "")
    release = environ.get("HELM_RELEASE_NAME", "")
    if not namespace:
        return LOCAL
    name = namespace if release in ("", namespace) else f"{namespace}-{release}"
    return fitted(name)


def fitted(name: str) -> str:
    """`name` made a valid install name: lowercase, other characters as '-', and a long name cut
    to 31 characters plus 8 of its hash (so two long names stay apart)."""
    cleaned = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-") or LOCAL
    if len(cleaned) <= 40:
        return cleaned
    digest = hashlib.sha256(cleaned.encode()).hexdigest()[:8]
    return f"{cleaned[:31].rstrip('-')}-{digest}"
