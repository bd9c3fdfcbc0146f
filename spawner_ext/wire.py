"""What crosses process boundaries about a server, written and read here only: pod labels and
annotations, spawner state, and the environment of local servers. Nothing else in the package
spells a `gpuhub.io/` key, a spawner-state key or a `GPUHUB_` server variable.

Every reader is total: a value another version (or a person) wrote wrongly reads as "unknown"
(None), never as an exception, and `read_*(write_*(x)) == x` (tests/test_wire.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

PREFIX = "gpuhub.io/"
SESSION_LABEL = f"{PREFIX}session"
"""Label of the ledger session of a notebook pod; pods with it are the ones reconciled."""
TEAM_LABEL = f"{PREFIX}team"
INSTALL_LABEL = f"{PREFIX}install"
"""The install (hub and service) that made an object (spawner_ext/install.py)."""
PROFILE_LABEL = f"{PREFIX}profile"
GPU_TYPE_LABEL = f"{PREFIX}gpu-type"
GPU_COUNT_LABEL = f"{PREFIX}gpu-count"
USER_ANNOTATION = f"{PREFIX}user"
SERVER_NAME_ANNOTATION = f"{PREFIX}server-name"
PRICE_ANNOTATION = f"{PREFIX}price-per-hour"
CURRENCY_ANNOTATION = f"{PREFIX}currency"
CATALOG_VERSION_ANNOTATION = f"{PREFIX}catalog-version"
MANAGED_BY = {"app.kubernetes.io/managed-by": "gpuhub"}
NONE = "none"
"""Label value of 'no team' / 'no GPU type' (labels cannot be empty and mean something)."""

STATE_PLAN = "gpuhub"
"""Spawner-state key of the server summary (team, profile, GPUs, price)."""
STATE_SESSION = "gpuhub_session"
STATE_DEVICES = "gpuhub_devices"
STATE_RUNTIME_REF = "gpuhub_runtime_ref"

ENV_SERVER = "GPUHUB_SERVER"
"""Environment variable of a local server: 'user/servername', so a restarted hub finds it."""
ENV_SESSION = "GPUHUB_SESSION"
ENV_DEVICES = "GPUHUB_DEVICES"
HUB_API_URL = "JUPYTERHUB_API_URL"
"""JupyterHub's variable (it sets it for servers and services): the hub's REST API."""
ENV_SUMMARY = "GPUHUB_SERVER_SUMMARY"
"""The server summary as JSON (write_summary), for a server the hub lost track of."""
ENV_SIMULATED_DEVICES = "GPUHUB_SIMULATED_DEVICES"
"""UUIDs of a local server's simulated GPUs (it gets no real one); the fake NVML has them."""
SERVICE_NAME = "gpu-usage"
"""The gpuhub service's name: JupyterHub serves it under /services/gpu-usage/."""
ENV_SERVICE_URL = "GPUHUB_SERVICE_URL"
"""Where a server's notebook extension reports GPU activity (the gpuhub service)."""
ENV_SAMPLE_SECONDS = "GPUHUB_SAMPLE_SECONDS"
"""How often the notebook extension samples the GPUs (default 10)."""
ENV_FAKE_NVML_CONFIG = "GPUHUB_FAKE_NVML_CONFIG"
"""The fake NVML's config file (spawner_ext/fakenvml), for simulated GPUs."""
ENV_TEAM = "GPUHUB_TEAM"
ENV_PROFILE = "GPUHUB_PROFILE"
ENV_GPU_TYPE = "GPUHUB_GPU_TYPE"
ENV_GPU_COUNT = "GPUHUB_GPU_COUNT"


@dataclass(frozen=True)
class ServerSummary:
    """What every process needs to know about a server besides whose it is: what it holds and
    what it costs. Kept in spawner state and on pods; a SpawnPlan makes one (`summary_of`)."""

    team: str | None
    profile: str
    gpu_type: str | None
    gpu_count: int
    price_per_hour: Decimal
    """Of the whole server (all its GPUs) per hour."""
    currency: str
    catalog_version: str = ""


@dataclass(frozen=True)
class ServerState:
    """gpuhub's part of a spawner's state in JupyterHub's database."""

    summary: ServerSummary | None = None
    session: str | None = None
    """The key of its ledger session (wire-safe; see `read_session`)."""
    devices: tuple[str, ...] = ()
    """UUIDs of the local GPUs (or MIG devices) the server holds."""
    runtime_ref: str | None = None
    """Where it runs once started: `namespace/pod`, or `local:<pid>`."""


@dataclass(frozen=True)
class PodRecord:
    """What a notebook pod says about itself."""

    summary: ServerSummary | None
    session: str | None
    user: str
    server_name: str
    install: str | None = None
    """The install that made the pod; None on a pod from before installs were told apart."""


@dataclass(frozen=True)
class ServerEnv:
    """What a local server's environment says about it (read from /proc after a hub restart)."""

    server_key: str
    session: str | None
    devices: tuple[str, ...]
    summary: ServerSummary | None = None
    hub_api_url: str = ""
    """Which hub it belongs to (JupyterHub's own JUPYTERHUB_API_URL of the server): several
    hubs may run on one machine, and each minds only its own servers."""

    @property
    def user(self) -> str:
        return self.server_key.split("/", 1)[0]

    @property
    def server_name(self) -> str:
        return self.server_key.split("/", 1)[1]


# --- readers' helpers -----------------------------------------------------------------------


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


_SESSION_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,35}")


def read_session(value: Any) -> str | None:
    """A ledger session's key as a label, state or environment carries it: a UUID's 32 hex
    digits, or (written before session keys) a positive integer id; None when malformed."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value) if value > 0 else None
    if not isinstance(value, str) or not _SESSION_KEY.fullmatch(value):
        return None
    return None if value.isdigit() and int(value) == 0 else value


def _decimal(value: Any) -> Decimal | None:
    try:
        found = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    return found if found.is_finite() and found >= 0 else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


# --- spawner state ----------------------------------------------------------------------------


def write_summary(summary: ServerSummary) -> dict[str, Any]:
    return {
        "team": summary.team,
        "profile": summary.profile,
        "gpu_type": summary.gpu_type,
        "gpu_count": summary.gpu_count,
        "price_per_hour": str(summary.price_per_hour),
        "currency": summary.currency,
        "catalog_version": summary.catalog_version,
    }


def read_summary(data: Any) -> ServerSummary | None:
    """A summary from its JSON form; None when it is missing or malformed."""
    if not isinstance(data, Mapping):
        return None
    profile, count = _text(data.get("profile")), _int(data.get("gpu_count"))
    price = _decimal(data.get("price_per_hour", "0"))
    team, gpu_type = data.get("team"), data.get("gpu_type")
    if profile is None or count is None or price is None or count < 0:
        return None
    if not isinstance(team, str | None) or not isinstance(gpu_type, str | None):
        return None
    if (gpu_type is None) != (count == 0):
        return None
    return ServerSummary(
        team=team,
        profile=profile,
        gpu_type=gpu_type,
        gpu_count=count,
        price_per_hour=price,
        currency=_text(data.get("currency")) or "USD",
        catalog_version=_text(data.get("catalog_version")) or "",
    )


def write_state(state: ServerState) -> dict[str, Any]:
    """The keys gpuhub adds to a spawner's state (only those that are set)."""
    out: dict[str, Any] = {}
    if state.summary is not None:
        out[STATE_PLAN] = write_summary(state.summary)
    if state.session is not None:
        out[STATE_SESSION] = state.session
    if state.devices:
        out[STATE_DEVICES] = list(state.devices)
    if state.runtime_ref:
        out[STATE_RUNTIME_REF] = state.runtime_ref
    return out


def read_state(state: Mapping[str, Any] | None) -> ServerState:
    state = state or {}
    devices = state.get(STATE_DEVICES)
    uuids = (
        tuple(d for d in devices if isinstance(d, str) and d) if isinstance(devices, list) else ()
    )
    return ServerState(
        summary=read_summary(state.get(STATE_PLAN)),
        session=read_session(state.get(STATE_SESSION)),
        devices=uuids,
        runtime_ref=_text(state.get(STATE_RUNTIME_REF)) or None,
    )


# --- pods -------------------------------------------------------------------------------------


def _label_value(value: str | None) -> str:
    return NONE if value is None else value


def _from_label(value: str | None) -> str | None:
    return None if value in (None, "", NONE) else value


def summary_labels(summary: ServerSummary) -> dict[str, str]:
    """Labels that identify a server for metering, quotas and reports (label-safe values:
    team keys, profile slugs and GPU type keys are slugs)."""
    return {
        TEAM_LABEL: _label_value(summary.team),
        PROFILE_LABEL: summary.profile,
        GPU_TYPE_LABEL: _label_value(summary.gpu_type),
        GPU_COUNT_LABEL: str(summary.gpu_count),
    }


def pod_labels(summary: ServerSummary, session: str | None, install: str) -> dict[str, str]:
    labels = {**summary_labels(summary), **install_labels(install)}
    if session is not None:
        labels[SESSION_LABEL] = session
    return labels


def pod_annotations(summary: ServerSummary, user: str, server_name: str) -> dict[str, str]:
    return {
        USER_ANNOTATION: user,
        SERVER_NAME_ANNOTATION: server_name,
        PRICE_ANNOTATION: str(summary.price_per_hour),
        CURRENCY_ANNOTATION: summary.currency,
        CATALOG_VERSION_ANNOTATION: summary.catalog_version,
    }


def read_pod(labels: Mapping[str, str] | None, annotations: Mapping[str, str] | None) -> PodRecord:
    """A notebook pod's labels and annotations, as `pod_labels`/`pod_annotations` wrote them
    (KubeSpawner's own `hub.jupyter.org/` annotations name the user where ours are missing)."""
    labels, notes = labels or {}, annotations or {}
    summary = read_summary(
        {
            "team": _from_label(labels.get(TEAM_LABEL)),
            "profile": labels.get(PROFILE_LABEL),
            "gpu_type": _from_label(labels.get(GPU_TYPE_LABEL)),
            "gpu_count": labels.get(GPU_COUNT_LABEL),
            "price_per_hour": notes.get(PRICE_ANNOTATION, "0"),
            "currency": notes.get(CURRENCY_ANNOTATION),
            "catalog_version": notes.get(CATALOG_VERSION_ANNOTATION),
        }
    )
    return PodRecord(
        summary=summary,
        session=read_session(labels.get(SESSION_LABEL)),
        user=notes.get(USER_ANNOTATION) or notes.get("hub.jupyter.org/username", ""),
        server_name=notes.get(SERVER_NAME_ANNOTATION, notes.get("hub.jupyter.org/servername", "")),
        install=labels.get(INSTALL_LABEL) or None,
    )


def team_object_labels(team: str, install: str) -> dict[str, str]:
    """Labels of what gpuhub makes for a team (its namespace, its ResourceQuota, its
    NetworkPolicy): whose, and which install made it."""
    return {TEAM_LABEL: team, **install_labels(install), **MANAGED_BY}


def install_labels(install: str) -> dict[str, str]:
    """The label naming the install that made an object."""
    return {INSTALL_LABEL: install}


def install_of(labels: Mapping[str, str] | None) -> str | None:
    """The install named by an object's labels; None when it names none (made before)."""
    return (labels or {}).get(INSTALL_LABEL) or None


# --- local servers' environment ---------------------------------------------------------------


def server_env(
    summary: ServerSummary | None, server_key: str, session: str | None, devices: tuple[str, ...]
) -> dict[str, str]:
    env = {
        ENV_SERVER: server_key,
        ENV_SESSION: session or "",
        ENV_DEVICES: ",".join(devices),
    }
    if summary is not None:
        env.update(
            {
                ENV_SUMMARY: json.dumps(write_summary(summary), sort_keys=True),
                ENV_TEAM: summary.team or "",
                ENV_PROFILE: summary.profile,
                ENV_GPU_TYPE: summary.gpu_type or "",
                ENV_GPU_COUNT: str(summary.gpu_count),
            }
        )
    return env


def read_server_env(environ: Mapping[str, str]) -> ServerEnv | None:
    """None for a process that is no gpuhub server."""
    key = environ.get(ENV_SERVER)
    if not key or "/" not in key:
        return None
    devices = tuple(d for d in environ.get(ENV_DEVICES, "").split(",") if d)
    try:
        summary = read_summary(json.loads(environ.get(ENV_SUMMARY) or "null"))
    except ValueError:
        summary = None
    return ServerEnv(
        key,
        read_session(environ.get(ENV_SESSION)),
        devices,
        summary,
        environ.get(HUB_API_URL, ""),
    )
