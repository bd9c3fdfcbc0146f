"""`gpuhub service`: run the gpuhub service. JupyterHub starts it as a managed service and gives it
JUPYTERHUB_API_TOKEN, JUPYTERHUB_API_URL, JUPYTERHUB_SERVICE_URL and JUPYTERHUB_SERVICE_PREFIX."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from urllib.parse import urlparse

from sqlalchemy.exc import DBAPIError

from ..catalog import CatalogError
from ..catalog.store import CatalogStore
from ..install import InstallError, checked_install, default_install
from ..ledger.engine import DEFAULT_URL, SchemaError
from ..local.processes import live_servers
from ..wire import SERVICE_NAME
from . import cookie_secret
from .app import GPUHubService
from .hubapi import HubAPI
from .notifier import INTERVAL as NOTIFIER_INTERVAL
from .runtimes import KubeRuntime, LocalRuntime, Runtime, kube_api_client
from .web import make_app

RUNTIMES = ("local", "kubernetes")
PARENT_CHECK_SECONDS = 1.0


def add_service_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    service = subparsers.add_parser(
        "service",
        help="run the gpuhub service (JupyterHub starts it: reconciliation, budgets, quotas)",
        description="Run the gpuhub service. JupyterHub starts it as a managed service; it "
        "needs the JUPYTERHUB_API_TOKEN and JUPYTERHUB_API_URL that JupyterHub gives it.",
    )
    service.add_argument("--catalog", required=True, metavar="FILE", help="the catalog YAML")
    service.add_argument(
        "--db-url",
        default=DEFAULT_URL,
        help=f"SQLAlchemy URL of the billing database (default: {DEFAULT_URL})",
    )
    service.add_argument(
        "--runtime",
        choices=RUNTIMES,
        required=True,
        help="where servers run: local processes (gpuhub up) or Kubernetes pods",
    )
    service.add_argument(
        "--install",
        metavar="NAME",
        help="the install whose servers and sessions this service minds (its hub's "
        "c.GPUSpawnerMixin.install; default as the hub's: the namespace, and Helm release when "
        "it differs, from POD_NAMESPACE and HELM_RELEASE_NAME; else 'local')",
    )
    service.add_argument(
        "--no-resource-quotas",
        action="store_true",
        help="Kubernetes: do not keep team namespaces' ResourceQuotas in sync with the catalog",
    )
    service.add_argument(
        "--metrics-user-labels",
        action="store_true",
        help="label gpuhub_gpus_allocated with user names too (off: labels are bounded by the "
        "catalog's teams and GPU types)",
    )
    service.add_argument(
        "--no-culling",
        action="store_true",
        help="do not cull idle servers (e.g. when stock jupyterhub-idle-culler runs instead, "
        "with gpuhub's policy as its cull_arbiter_hook); the activity API still records waste",
    )
    service.add_argument(
        "--cookie-secret-file",
        metavar="FILE",
        help="the secret that signs usage-page logins, as hex digits; made (mode 0600, random) "
        f"if missing, so a restart logs nobody out. {cookie_secret.ENV} wins over it; without "
        "either, a new secret at every start logs every reader out",
    )
    service.add_argument(
        "--ip",
        metavar="ADDRESS",
        help="listen on this address (default: the host of JUPYTERHUB_SERVICE_URL); 0.0.0.0 "
        "when the service's URL names another host, e.g. the hub's Kubernetes Service",
    )
    service.add_argument(
        "--port",
        type=int,
        metavar="PORT",
        help="listen on this port (default: the port of JUPYTERHUB_SERVICE_URL)",
    )
    service.set_defaults(run=run_service)


def _fail(message: str) -> int:
    print(f"gpuhub service: {message}", file=sys.stderr)
    return 2


async def _exit_with_parent(stop: asyncio.Event) -> None:
    """End when the hub that started us is gone (killed hubs do not stop their services; the
    hub started again starts a new one)."""
    parent = os.getppid()
    while os.getppid() == parent:  # noqa: ASYNC110 - nothing signals a parent's death
        await asyncio.sleep(PARENT_CHECK_SECONDS)
    logging.getLogger("gpuhub.service").warning("gpuhub service: the hub is gone; exiting")
    stop.set()


async def _notify(service: GPUHubService) -> None:
    """Send the outbox's messages until cancelled (notifier.py); a billing database that
    cannot be opened yet is tried again."""
    while True:
        try:
            notifier = service.notifier()
        except (DBAPIError, SchemaError, OSError) as exc:
            logging.getLogger("gpuhub.notifier").error(
                "notifier: the billing database cannot be opened, trying again: %s", exc
            )
            await asyncio.sleep(NOTIFIER_INTERVAL.total_seconds())
            continue
        await notifier.run()


def run_service(args: argparse.Namespace) -> int:
    token = os.environ.get("JUPYTERHUB_API_TOKEN", "")
    api_url = os.environ.get("JUPYTERHUB_API_URL", "")
    if not token or not api_url:
        return _fail(
            "JUPYTERHUB_API_TOKEN and JUPYTERHUB_API_URL are not set; JupyterHub sets them when "
            f"it starts the service (add it with the '{SERVICE_NAME}' entry of "
            "c.JupyterHub.services, see docs/explanation/architecture.md)"
        )
    logging.basicConfig(
        level=logging.INFO, format="[%(levelname).1s %(asctime)s %(name)s] %(message)s"
    )
    try:
        store = CatalogStore(args.catalog, log=logging.getLogger("gpuhub.catalog"))
    except CatalogError as exc:
        return _fail(f"the catalog {args.catalog} is not valid:\n{exc}")
    try:
        install = checked_install(args.install or default_install(os.environ))
    except InstallError as exc:
        return _fail(f"--install: {exc}")
    path = Path(args.cookie_secret_file) if args.cookie_secret_file else None
    try:
        secret = cookie_secret.load(path, os.environ)
    except cookie_secret.CookieSecretError as exc:
        return _fail(str(exc))
    if secret is None:
        logging.getLogger("gpuhub.service").warning(
            "gpuhub service: no --cookie-secret-file nor %s: readers of the usage page log in "
            "again after every restart of the service",
            cookie_secret.ENV,
        )
        secret = os.urandom(cookie_secret.SECRET_BYTES)
    service_url = urlparse(os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:0"))
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", f"/services/{SERVICE_NAME}/")
    host = args.ip or service_url.hostname
    port = args.port if args.port is not None else service_url.port
    asyncio.run(_serve(args, store, token, api_url, host, port, prefix, secret, install))
    return 0


async def _serve(
    args: argparse.Namespace,
    store: CatalogStore,
    token: str,
    api_url: str,
    host: str | None,
    port: int | None,
    prefix: str,
    secret: bytes,
    install: str,
) -> None:
    runtime: Runtime
    if args.runtime == "kubernetes":
        runtime = KubeRuntime(
            await kube_api_client(), install, manage_quotas=not args.no_resource_quotas
        )
    else:
        runtime = LocalRuntime(lambda: live_servers(api_url))
    service = GPUHubService(store, args.db_url, HubAPI(api_url, token), runtime, install=install)
    app = make_app(
        service, prefix, cookie_secret=secret, metrics_user_labels=args.metrics_user_labels
    )
    server = app.listen(port or 0, address=host or "127.0.0.1")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks = [
        asyncio.create_task(service.run()),
        *([] if args.no_culling else [asyncio.create_task(service.run_culler())]),
        asyncio.create_task(_notify(service)),
        asyncio.create_task(store.watch()),
        asyncio.create_task(_exit_with_parent(stop)),
    ]
    logging.getLogger("gpuhub.service").info(
        "gpuhub service: %s runtime, catalog %s, ticking every %s",
        runtime.name,
        args.catalog,
        store.catalog.metering.reconcile_interval,
    )
    await stop.wait()
    for task in tasks:
        task.cancel()
    server.stop()
    service.close()
