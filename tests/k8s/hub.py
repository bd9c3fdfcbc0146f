"""A real JupyterHub (with configurable-http-proxy) as a subprocess, spawning through
GPUKubeSpawner or stock KubeSpawner into a testbed ControlPlane. Plain Python, no pytest, so the
spawn-storm benchmark uses it too. It must never run against a real cluster.

The hub listens on 127.0.0.1 only (`hub_ip` and `hub_connect_ip`), so pods of the process kubelet,
which share the host's network, reach its API. kwok pods run no process: for those (pod IP outside
127.0.0.0/8) the spawner's pod URL points at a stub inside the hub process that answers every
request, so the hub sees them start like any other server. That redirect, and the stub, live in the
hub's test configuration (`kwok_aware`), not in the product.

Each hub has its own directory (jupyterhub.sqlite, a SQLite ledger, cookie secret, log), an API
token service with admin scopes for the tests, and can be killed with SIGKILL and started again on
the same state.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests
import yaml
from testbed import ControlPlane, free_port

VENV_BIN = Path(sys.executable).parent
HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
START_TIMEOUT = 120.0
LOG_NOISE = (
    "GET /hub/api/users/",
    "Checking access to /hub/api/users/",
    "watcher timeout",
    "Connecting pods watcher",
    "Connecting events watcher",
)

CONFIG = """\
import sys
sys.path.insert(0, {here!r})
from hub import kwok_aware, serve_stub

c = get_config()  # noqa: F821
serve_stub({stub_port})
c.JupyterHub.spawner_class = kwok_aware({spawner!r}, {stub_port})
c.JupyterHub.bind_url = "http://127.0.0.1:{port}/"
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.JupyterHub.hub_connect_ip = "127.0.0.1"
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.ConfigurableHTTPProxy.command = [{chp!r}]
c.ConfigurableHTTPProxy.pid_file = {proxy_pid!r}
c.ConfigurableHTTPProxy.auth_token = {proxy_token!r}
c.JupyterHub.db_url = {hub_db_url!r}
c.JupyterHub.cookie_secret_file = "{workdir}/jupyterhub_cookie_secret"
c.JupyterHub.pid_file = "{workdir}/jupyterhub.pid"
c.JupyterHub.cleanup_servers = False
c.JupyterHub.cleanup_proxy = False
c.JupyterHub.concurrent_spawn_limit = 0
c.JupyterHub.last_activity_interval = 3600
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
c.JupyterHub.services = [{{"name": "gpuhub-tests", "api_token": {token!r}}}]
c.JupyterHub.load_roles = [
    {{
        "name": "gpuhub-tests",
        "scopes": ["admin:users", "admin:servers", "admin:server_state", "access:servers",
                   "read:hub"],
        "services": ["gpuhub-tests"],
    }}
]
c.Spawner.start_timeout = {start_timeout}
c.Spawner.http_timeout = {http_timeout}
c.Spawner.poll_interval = {poll_interval}
c.Spawner.default_url = "/lab"
c.KubeSpawner.namespace = {namespace!r}
c.KubeSpawner.image = "gpuhub/notebook:test"
c.KubeSpawner.image_pull_policy = "Never"
c.KubeSpawner.cmd = ["jupyterhub-singleuser"]
c.Spawner.args = ["--allow-root"]  # the tests run as root on CI machines
c.KubeSpawner.delete_grace_period = 1
c.KubeSpawner.slow_spawn_message_threshold = 0
c.GPUKubeSpawner.catalog_path = {catalog!r}
c.GPUKubeSpawner.ledger_url = {ledger_url!r}
{service}
{extra}
"""

SERVICE = """\
from spawner_ext.catalog import load_catalog
from spawner_ext.service.registration import register, service_config
register(c, service_config(
    {catalog!r}, {ledger_url!r}, "kubernetes", port={port},
    environment={{"KUBECONFIG": {kubeconfig!r}, "PYTHONUNBUFFERED": "1"}},
    catalog=load_catalog({catalog!r}),  # the roles of its teams' leads
    install={install!r},
    resource_quotas={resource_quotas!r},
))
c.GPUKubeSpawner.manage_resource_quotas = {resource_quotas!r}
if {install!r}:
    c.GPUKubeSpawner.install = {install!r}
"""


# --- inside the hub process: the kwok stub --------------------------------------------------


class _StubHandler(BaseHTTPRequestHandler):
    """Answers for a kwok pod's notebook server: 200 and JupyterHub's version header."""

    def do_GET(self) -> None:
        from jupyterhub import __version__

        body = json.dumps({"stub": "kwok pod", "path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-JupyterHub-Version", __version__)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _StubServer(ThreadingHTTPServer):
    request_queue_size = 1024
    """A spawn storm's hub checks hundreds of servers at once: the default listen backlog (5)
    drops their connects, which then wait out TCP's retransmission (seconds to minutes)."""


def serve_stub(port: int) -> None:
    """Start the stub in a daemon thread of the calling (hub) process."""
    server = _StubServer(("127.0.0.1", port), _StubHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="kwok-stub", daemon=True).start()


def kwok_aware(spawner: str, stub_port: int) -> type:
    """The spawner class `spawner` ("gpuhub-kube" or "kubespawner"), with kwok pods' URLs
    pointing at the stub. Pods of the process kubelet (127.x addresses) keep their own URL."""
    if spawner == "gpuhub-kube":
        from spawner_ext.kube.spawner import GPUKubeSpawner as base
    else:
        from kubespawner import KubeSpawner as base

    def _get_pod_url(self: Any, pod: Mapping[str, Any]) -> str:
        ip = (pod.get("status") or {}).get("podIP") or ""
        if ip and not ip.startswith("127."):
            return f"http://127.0.0.1:{stub_port}"
        url: str = base._get_pod_url(self, pod)
        return url

    return type(f"KwokAware{base.__name__}", (base,), {"_get_pod_url": _get_pod_url})


# --- in the test process --------------------------------------------------------------------


class HubError(RuntimeError):
    """The hub did not start or answered unexpectedly; the message has its log's tail."""


class K8sHub:
    """One hub and its restarts, on one directory. `api()` talks to its REST API as an admin
    service; `ledger_url` is its billing database (None for stock KubeSpawner)."""

    def __init__(
        self,
        plane: ControlPlane,
        workdir: Path,
        *,
        spawner: str = "gpuhub-kube",
        namespace: str,
        catalog: Mapping[str, Any] | None = None,
        start_timeout: int = 60,
        http_timeout: int = 120,
        poll_interval: int = 5,
        extra_config: str = "",
        install: str | None = None,
        ledger_url: str | None = None,
        hub_db_url: str | None = None,
        resource_quotas: bool = True,
    ) -> None:
        """`install`: the hub's and its service's install name (None: their default).
        `resource_quotas`: the hub and its service keep team ResourceQuotas (the default).
        `ledger_url`: a billing database to share with other hubs (already upgraded; None: a
        SQLite ledger of its own in `workdir`). `hub_db_url`: JupyterHub's own database (None:
        jupyterhub.sqlite in `workdir`)."""
        self.plane = plane
        self.workdir = workdir
        self.spawner = spawner
        self.namespace = namespace
        self.port, self.hub_port, self.service_port = free_port(), free_port(), free_port()
        self.proxy_api_port, self.stub_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.token = os.urandom(16).hex()
        self.log_path = workdir / "jupyterhub.log"
        self.catalog_path = workdir / "catalog.yaml"
        self.ledger_url: str | None = None
        if catalog is not None:
            self.catalog_path.write_text(yaml.safe_dump(dict(catalog), sort_keys=False))
            if ledger_url is None:
                self.ledger_url = f"sqlite:///{workdir}/ledger.sqlite"
                self._upgrade_ledger()
            else:
                self.ledger_url = ledger_url
        chp = shutil.which("configurable-http-proxy", path=str(VENV_BIN)) or shutil.which(
            "configurable-http-proxy"
        )
        if chp is None:
            raise HubError("configurable-http-proxy is missing; run scripts/bootstrap node")
        self.config_path = workdir / "jupyterhub_config.py"
        self.config_path.write_text(
            CONFIG.format(
                here=str(HERE),
                stub_port=self.stub_port,
                spawner=spawner,
                port=self.port,
                hub_port=self.hub_port,
                proxy_api_port=self.proxy_api_port,
                chp=chp,
                proxy_pid=str(workdir / "proxy.pid"),
                proxy_token=os.urandom(16).hex(),
                workdir=str(workdir),
                hub_db_url=hub_db_url or f"sqlite:///{workdir}/jupyterhub.sqlite",
                token=self.token,
                start_timeout=start_timeout,
                http_timeout=http_timeout,
                poll_interval=poll_interval,
                namespace=namespace,
                catalog=str(self.catalog_path),
                ledger_url=self.ledger_url or "",
                service=""
                if self.ledger_url is None
                else SERVICE.format(
                    catalog=str(self.catalog_path),
                    ledger_url=self.ledger_url,
                    port=self.service_port,
                    kubeconfig=str(plane.kubeconfig),
                    install=install,
                    resource_quotas=resource_quotas,
                ),
                extra=extra_config,
            )
        )
        self.process: subprocess.Popen[bytes] | None = None
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"token {self.token}"

    def _upgrade_ledger(self) -> None:
        assert self.ledger_url is not None
        done = subprocess.run(
            [str(VENV_BIN / "gpuhub"), "db", "upgrade", "--db-url", self.ledger_url],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise HubError(f"gpuhub db upgrade failed:\n{done.stdout}\n{done.stderr}")

    # --- processes -------------------------------------------------------------------------

    def start(self) -> None:
        """Start JupyterHub (it starts the proxy) and wait until its API answers."""
        env = {
            **os.environ,
            "KUBECONFIG": str(self.plane.kubeconfig),
            "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(HERE)]),
            "PYTHONUNBUFFERED": "1",
        }
        env.pop("KUBERNETES_SERVICE_HOST", None)
        with self.log_path.open("ab") as log:
            log.write(f"\n=== starting JupyterHub at {time.strftime('%X')} ===\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                [str(VENV_BIN / "jupyterhub"), "-f", str(self.config_path), "--debug"],
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise HubError(f"JupyterHub exited with {self.process.returncode}\n{self.log()}")
            with contextlib.suppress(requests.RequestException):
                if self.api("GET", "/").status_code == 200:
                    return
            time.sleep(0.3)
        raise HubError(f"JupyterHub did not answer in {START_TIMEOUT}s\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL to JupyterHub alone, as a crash would: the proxy and the pods live on."""
        process, self.process = self.process, None
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGKILL)
            process.wait()

    def stop(self) -> None:
        """End JupyterHub and everything in its process group (the proxy), SIGKILL if need be.
        Pods are left alone: delete their namespaces to remove them."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        self._kill_proxy()

    def _kill_proxy(self) -> None:
        """A proxy left by a killed hub (it lives in that hub's process group)."""
        with contextlib.suppress(OSError, ValueError):
            pid = int((self.workdir / "proxy.pid").read_text())
            if b"configurable-http-proxy" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)

    def log(self, lines: int = 80) -> str:
        """The end of the hub's log, without the tests' own polling of the REST API."""
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError as error:
            return f"({error})"
        kept = [line for line in text if not any(noise in line for noise in LOG_NOISE)]
        return f"--- last lines of {self.log_path} ---\n" + "\n".join(kept[-lines:])

    # --- REST API --------------------------------------------------------------------------

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 60)
        return self.session.request(method, f"{self.url}hub/api{path}", **kwargs)

    def create_users(self, names: list[str]) -> None:
        response = self.api("POST", "/users", json={"usernames": names})
        if response.status_code not in (201, 409):
            raise HubError(f"creating users: {response.status_code} {response.text}")

    def user(self, name: str) -> dict[str, Any]:
        response = self.api("GET", f"/users/{quote(name)}")
        if response.status_code != 200:
            raise HubError(f"GET user {name}: {response.status_code} {response.text}")
        model: dict[str, Any] = response.json()
        return model

    def spawn(self, name: str, options: Mapping[str, Any], server: str = "") -> requests.Response:
        """POST the spawn request; the response as it is (201, 202 or a refusal)."""
        return self.api("POST", server_path(name, server), json=dict(options))

    def server(self, name: str, server: str = "") -> dict[str, Any] | None:
        found: dict[str, Any] | None = self.user(name)["servers"].get(server)
        return found

    def wait_ready(self, name: str, server: str = "", timeout: float = 150) -> dict[str, Any]:
        """Wait until the server is ready; its model (with state: namespace, pod_name)."""

        def ready() -> dict[str, Any] | None:
            model = self.server(name, server)
            if model is None:
                raise HubError(f"{name}'s server {server!r} is gone (failed?)\n{self.log()}")
            return model if model["ready"] else None

        return self.wait(f"{name}'s server {server!r} to be ready", ready, timeout)

    def ready_pod(self, name: str, server: str = "") -> dict[str, Any]:
        """The pod of the user's server once it is ready, as the API server has it."""
        state = self.wait_ready(name, server)["state"]
        pod: dict[str, Any] = self.plane.api.get(
            f"/api/v1/namespaces/{state['namespace']}/pods/{state['pod_name']}"
        )
        return pod

    def stop_server(self, name: str, server: str = "", timeout: float = 90) -> None:
        response = self.api("DELETE", server_path(name, server))
        if response.status_code not in (202, 204):
            raise HubError(f"stopping {name}: {response.status_code} {response.text}")
        self.wait(f"{name}'s server to stop", lambda: self.server(name, server) is None, timeout)

    def progress(self, name: str, server: str = "", timeout: float = 300) -> list[dict[str, Any]]:
        """The spawn's progress events as the spawn page reads them, until ready or failed."""
        path = server_path(name, server) + "/progress"
        events: list[dict[str, Any]] = []
        with self.api("GET", path, stream=True, timeout=timeout) as response:
            if response.status_code != 200:
                raise HubError(f"progress of {name}: {response.status_code} {response.text}")
            for line in response.iter_lines(decode_unicode=True):
                if line and line.startswith("data:"):
                    event = json.loads(line[5:])
                    events.append(event)
                    if event.get("ready") or event.get("failed"):
                        break
        return events

    def wait(self, what: str, check: Callable[[], Any], timeout: float, every: float = 0.3) -> Any:
        """Poll `check` until it returns something truthy; HubError with the log otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise HubError(f"gave up after {timeout:.0f}s waiting for {what}\n{self.log()}")
            if self.process is not None and self.process.poll() is not None:
                raise HubError(f"JupyterHub died while waiting for {what}\n{self.log()}")
            time.sleep(every)


def server_path(name: str, server: str = "") -> str:
    """The REST path of a user's default (or named) server."""
    if server:
        return f"/users/{quote(name)}/servers/{quote(server)}"
    return f"/users/{quote(name)}/server"


@contextlib.contextmanager
def running_hub(plane: ControlPlane, workdir: Path, **settings: Any) -> Iterator[K8sHub]:
    """A started hub in `workdir`, its namespace created first; the hub and its proxy are ended
    afterwards (pods stay: delete their namespaces with `delete_namespaces`)."""
    hub = K8sHub(plane, workdir, **settings)
    ensure_namespace(plane, hub.namespace)
    try:
        hub.start()
        yield hub
    finally:
        hub.stop()


def ensure_namespace(plane: ControlPlane, name: str) -> None:
    from testbed import ApiError, wait_for

    try:
        plane.api.create(
            "/api/v1/namespaces",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
        )
    except ApiError as error:
        if error.status != 409:
            raise
    wait_for(
        f"the default ServiceAccount in {name}",
        lambda: plane.api.get(f"/api/v1/namespaces/{name}/serviceaccounts/default"),
    )


def delete_namespaces(plane: ControlPlane, names: list[str]) -> None:
    """Delete namespaces (their pods go with them) without waiting."""
    from testbed import ApiError

    for name in names:
        try:
            plane.api.delete(f"/api/v1/namespaces/{name}")
        except ApiError as error:
            if error.status != 404:
                raise
