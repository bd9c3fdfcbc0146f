"""gpuhub on the Zero to JupyterHub chart: what `hub.extraConfig` runs (helm-values/values.yaml).

The chart's own hub configuration has set up KubeSpawner, the proxy and the database by then;
`configure(c, settings, ...)` adds the platform on top: GPUKubeSpawner with the catalog and the
billing database, the gpuhub service in the hub's pod (reachable through the hub Service's extra
port, so the proxy and notebook pods reach it), its roles and scopes, and the ledger's schema.
`settings` are the values' `custom.gpuhub` (camelCase, like the chart's own); `plan()` reads and
checks them (pure), `configure` applies them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TextIO

from .catalog import load_catalog
from .install import InstallError, checked_install, default_install
from .ledger.engine import upgrade as upgrade_ledger
from .service.notifier import secret_environment
from .service.registration import register, service_config
from .wire import SERVICE_NAME

SPAWNER = "gpuhub-kube"
Z2JH_SPAWNER = "kubespawner.KubeSpawner"
"""What the chart's configuration sets `c.JupyterHub.spawner_class` to."""
SERVICE_ENV = (
    "KUBERNETES_SERVICE_HOST",  # in-cluster API access, with the pod's service account token
    "KUBERNETES_SERVICE_PORT",
    "KUBECONFIG",  # outside a cluster (the tests)
    "PGPASSWORD",  # a PostgreSQL billing database's password, from a Secret via hub.extraEnv
    "POD_NAMESPACE",
    # The secret of the service's logins, from the Secret gpuhub-service (helm-values/gpuhub/)
    # via hub.extraEnv: the same at every start, so a restart logs no usage-page reader out.
    "GPUHUB_SERVICE_COOKIE_SECRET",
)
"""The hub's environment variables the gpuhub service needs too (JupyterHub gives a managed
service a bare environment)."""


class SettingsError(ValueError):
    """`custom.gpuhub` is not valid; the message says which key and what to write."""


@dataclass(frozen=True)
class Settings:
    catalog_path: str = "/etc/gpuhub/catalog.yaml"
    """Where the catalog ConfigMap is mounted (a directory mount, so edits reach the hub)."""
    ledger_url: str = "sqlite:////srv/jupyterhub/gpuhub-ledger.sqlite"
    """The billing database: SQLite on the hub's PVC by default."""
    service_port: int = 10101
    """The gpuhub service's port in the hub's pod, and on the hub Service (extraPorts)."""
    culling: bool = True
    resource_quotas: bool = True
    """Keep a ResourceQuota backstop in each team namespace (the hub and the service)."""
    upgrade_database: bool = True
    """Create or upgrade the ledger's schema when the hub starts (one hub replica)."""
    install: str | None = None
    """The install's name (spawner_ext/install.py); None: the hub's namespace (and release)."""


KEYS = {
    "catalogPath": ("catalog_path", str),
    "ledgerUrl": ("ledger_url", str),
    "servicePort": ("service_port", int),
    "culling": ("culling", bool),
    "resourceQuotas": ("resource_quotas", bool),
    "upgradeDatabase": ("upgrade_database", bool),
    "install": ("install", str),
}


def plan(settings: Mapping[str, Any] | None) -> Settings:
    """`custom.gpuhub` of the chart's values -> Settings; SettingsError names a bad key."""
    given = dict(settings or {})
    unknown = sorted(set(given) - set(KEYS))
    if unknown:
        raise SettingsError(
            f"custom.gpuhub has unknown key(s) {', '.join(unknown)}; the keys are "
            f"{', '.join(KEYS)} (see helm-values/values.yaml)"
        )
    values: dict[str, Any] = {}
    for key, value in given.items():
        field, kind = KEYS[key]
        # bool is an int in Python: a port of `true` is refused, like a flag of 1.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise SettingsError(f"custom.gpuhub.{key} must be a {kind.__name__}, not {value!r}")
        values[field] = value
    planned = Settings(**values)
    if not 0 < planned.service_port < 65536:
        raise SettingsError(
            f"custom.gpuhub.servicePort must be a port number, not {planned.service_port}"
        )
    if planned.service_port == 8081:
        raise SettingsError("custom.gpuhub.servicePort 8081 is the hub's own port; choose another")
    if planned.install is not None:
        try:
            checked_install(planned.install)
        except InstallError as exc:
            raise SettingsError(f"custom.gpuhub.install: {exc}") from None
    if not planned.catalog_path.startswith("/"):
        raise SettingsError(
            f"custom.gpuhub.catalogPath must be an absolute path, not {planned.catalog_path!r}"
        )
    return planned


def configure(
    c: Any,
    settings: Mapping[str, Any] | None,
    *,
    hub_host: str = "hub",
    environ: Mapping[str, str] = os.environ,
    upgrade: Callable[[str], None] | None = None,
    out: TextIO = sys.stderr,
) -> Settings:
    """Wire gpuhub into the chart's config `c`. `hub_host`: the hub Service's name (the chart's
    `get_name("hub")`). Raises SettingsError on bad `custom.gpuhub`, CatalogError on a bad
    catalog (the hub does not start on one; a running hub keeps its last good catalog)."""
    planned = plan(settings)
    spawner = c.JupyterHub.spawner_class if "spawner_class" in c.JupyterHub else Z2JH_SPAWNER
    if spawner in (Z2JH_SPAWNER, "kubespawner", "kubernetes"):
        c.JupyterHub.spawner_class = SPAWNER
    if "KubeSpawner" in c and c.KubeSpawner.get("profile_list"):
        print(
            f"gpuhub: singleuser.profileList is set, but the catalog ({planned.catalog_path}) "
            "defines the profiles: the profileList is not used. Move its profiles into the "
            "catalog (gpuhub migrate values.yaml > catalog.yaml) and remove it.",
            file=out,
        )
        c.KubeSpawner.profile_list = []
    url = f"http://{hub_host}:{planned.service_port}"
    install = planned.install or default_install(environ)
    c.GPUKubeSpawner.install = install
    c.GPUKubeSpawner.manage_resource_quotas = planned.resource_quotas
    c.GPUKubeSpawner.catalog_path = planned.catalog_path
    c.GPUKubeSpawner.ledger_url = planned.ledger_url
    c.GPUKubeSpawner.activity_url = f"{url}/services/{SERVICE_NAME}/"
    # Team namespaces' NetworkPolicies let notebook pods reach the hub API and the service.
    c.GPUKubeSpawner.hub_ports = [8081, planned.service_port]
    if planned.upgrade_database:
        (upgrade or upgrade_ledger)(planned.ledger_url)
    admins = c.Authenticator.admin_users if "admin_users" in c.Authenticator else set()
    catalog = load_catalog(planned.catalog_path)
    register(
        c,
        service_config(
            planned.catalog_path,
            planned.ledger_url,
            "kubernetes",
            port=planned.service_port,
            url=url,
            environment={
                **{k: environ[k] for k in SERVICE_ENV if k in environ},
                **secret_environment(catalog, environ),  # the SMTP password, webhook secret
            },
            catalog=catalog,
            admin_users=admins,
            culling=planned.culling,
            resource_quotas=planned.resource_quotas,
            install=install,
        ),
    )
    return planned
