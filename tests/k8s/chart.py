"""The Zero to JupyterHub 4.4.0 chart with gpuhub's values, as an operator gets it short of
container images: Helm (built from Go modules by scripts/build-helm) renders the chart's sources
in ../shared/z2jh-4.4.0/chart/ with helm-values/, and `ChartHub` runs the chart's own hub
configuration (files/hub/jupyterhub_config.py and z2jh.py) on what Helm rendered.

That configuration reads fixed paths (/usr/local/etc/jupyterhub/, the ConfigMap and Secret the
hub's pod mounts; /srv/jupyterhub, its PVC; /etc/gpuhub, our catalog ConfigMap) and cluster DNS
names (hub, proxy-api). The hub runs in a private mount namespace (root only) where those paths
hold the rendered files and /etc/hosts names the Services 127.0.0.1, so nothing on the machine
changes. configurable-http-proxy runs beside it, in the same namespace, as the chart's proxy pod
would. Plain Python, no pytest.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import requests
import yaml
from testbed import ControlPlane, free_port, kubeconfig_document, tail

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
CHART = REPO_ROOT.parent / "shared" / "z2jh-4.4.0" / "chart"
VALUES = REPO_ROOT / "helm-values"
GPUHUB_CHART = VALUES / "gpuhub"
HUB_PORT = 8081  # fixed by the chart's jupyterhub_config.py (hub_bind_url http://:8081)
Json = dict[str, Any]


class ChartError(RuntimeError):
    pass


def helm_binary() -> Path:
    """Helm from scripts/build-helm (built on first use, minutes; then from its cache)."""
    result = subprocess.run(
        [str(REPO_ROOT / "scripts" / "build-helm")], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise ChartError(f"scripts/build-helm failed:\n{result.stderr[-3000:]}")
    return Path(result.stdout.strip().splitlines()[-1]) / "helm"


def helm(binary: Path, *args: str, home: Path) -> str:
    """Run helm with its caches and config under `home` (nothing of the user's)."""
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    result = subprocess.run(
        [str(binary), *args], capture_output=True, text=True, env=env, check=False
    )
    if result.returncode != 0:
        raise ChartError(f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def documents(text: str) -> list[Json]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def find(docs: Iterable[Json], kind: str, name: str) -> Json:
    for doc in docs:
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise ChartError(f"no {kind} {name} in the rendered chart")


def api_path(doc: Json, namespace: str) -> str:
    """The collection path to POST `doc` to."""
    group_version = doc["apiVersion"]
    base = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
    plural = {
        "NetworkPolicy": "networkpolicies",
        "PodDisruptionBudget": "poddisruptionbudgets",
        "ClusterRole": "clusterroles",
        "ClusterRoleBinding": "clusterrolebindings",
    }.get(doc["kind"], doc["kind"].lower() + "s")
    if doc["kind"] in ("ClusterRole", "ClusterRoleBinding", "Namespace", "PriorityClass"):
        return f"{base}/{plural}"
    return f"{base}/namespaces/{doc['metadata'].get('namespace', namespace)}/{plural}"


def secret_data(secret: Json) -> dict[str, str]:
    out = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    out.update(secret.get("stringData") or {})
    return out


def container_env(
    deployment: Json, secrets: Mapping[str, Mapping[str, str]], namespace: str
) -> dict[str, str]:
    """The hub container's environment as the kubelet would give it."""
    (container,) = [
        c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "hub"
    ]
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
            continue
        source = item.get("valueFrom", {})
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            env[item["name"]] = secrets[ref["name"]][ref["key"]]
        elif source.get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
            env[item["name"]] = namespace
        elif "fieldRef" in source:
            env[item["name"]] = "127.0.0.1"
    return env


LAUNCHER = """\
import os, subprocess, sys
layout = {layout!r}
def run(*args):
    subprocess.run(args, check=True)
# /etc: an overlay, so /etc/hosts and /etc/gpuhub change in this mount namespace only.
run("mount", "-t", "overlay", "overlay", "-o",
    f"lowerdir=/etc,upperdir={{layout['etc_upper']}},workdir={{layout['etc_work']}}", "/etc")
with open("/etc/hosts", "a") as hosts:
    hosts.write("\\n127.0.0.1 hub proxy-api proxy-public\\n")
os.makedirs("/etc/gpuhub", exist_ok=True)
run("mount", "--bind", layout["catalog_dir"], "/etc/gpuhub")
run("mount", "-t", "tmpfs", "tmpfs", "/usr/local/etc")
os.makedirs("/usr/local/etc/jupyterhub", exist_ok=True)
run("mount", "--bind", layout["hub_etc"], "/usr/local/etc/jupyterhub")
run("mount", "--bind", layout["srv"], "/srv")
os.makedirs("/srv/jupyterhub", exist_ok=True)
os.chdir("/srv/jupyterhub")
proxy = subprocess.Popen(layout["proxy"], stdout=sys.stdout, stderr=sys.stderr)
try:
    hub = subprocess.run(layout["hub"])
finally:
    proxy.terminate()
sys.exit(hub.returncode)
"""


class ChartHub:
    """The chart's hub (and a proxy), run from Helm's rendering, against a test ControlPlane.
    `rendered`: the z2jh chart's documents and helm-values/gpuhub/'s (its Secret)."""

    def __init__(
        self,
        plane: ControlPlane,
        workdir: Path,
        rendered: Sequence[Json],
        *,
        namespace: str,
        catalog: Mapping[str, Any],
        kube_token: str,
        python: Path,
        test_config: str,
    ) -> None:
        self.plane = plane
        self.workdir = workdir
        self.namespace = namespace
        self.proxy_port, self.proxy_api_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.proxy_port}/"
        self.log_path = workdir / "hub.log"
        self.srv = workdir / "srv"
        self.catalog_dir = workdir / "catalog"
        etc = workdir / "usr-local-etc-jupyterhub"
        for d in (
            self.srv / "jupyterhub",
            self.catalog_dir,
            etc / "config",
            etc / "secret",
            etc / "jupyterhub_config.d",
            workdir / "etc-upper",
            workdir / "etc-work",
        ):
            d.mkdir(parents=True, exist_ok=True)
        # The pod mounts the hub ConfigMap at config/ and the hub Secret at secret/ (every key a
        # file), and the ConfigMap's two Python files at the top.
        config_map = find(rendered, "ConfigMap", "hub")["data"]
        secret = secret_data(find(rendered, "Secret", "hub"))
        for key, text in config_map.items():
            (etc / "config" / key).write_text(text)
        for key, text in secret.items():
            (etc / "secret" / key).write_text(text)
        for name in ("jupyterhub_config.py", "z2jh.py"):
            (etc / name).write_text(config_map[name])
        (etc / "jupyterhub_config.d" / "00-test-bed.py").write_text(test_config)
        self.write_catalog(catalog)
        kubeconfig = workdir / "kubeconfig"
        kubeconfig.write_text(
            yaml.safe_dump(kubeconfig_document(plane.server, plane.ca_file, kube_token))
        )
        deployment = find(rendered, "Deployment", "hub")
        # Every Secret rendered (the chart's hub Secret, gpuhub's cookie secret), by name.
        secrets = {d["metadata"]["name"]: secret_data(d) for d in rendered if d["kind"] == "Secret"}
        env = container_env(deployment, secrets, namespace)
        env.update(
            KUBECONFIG=str(kubeconfig),
            HUB_SERVICE_HOST="127.0.0.1",
            HUB_SERVICE_PORT=str(HUB_PORT),
            PROXY_API_SERVICE_HOST="127.0.0.1",
            PROXY_API_SERVICE_PORT=str(self.proxy_api_port),
            PROXY_PUBLIC_SERVICE_HOST="127.0.0.1",
            PROXY_PUBLIC_SERVICE_PORT=str(self.proxy_port),
            PATH=f"{python.parent}:{os.environ['PATH']}",
            PYTHONUNBUFFERED="1",
            HOME=str(workdir),
        )
        env.pop("KUBERNETES_SERVICE_HOST", None)
        self.env = env
        chp = shutil.which("configurable-http-proxy", path=str(Path(sys.executable).parent))
        if chp is None:
            raise ChartError("configurable-http-proxy is missing; run scripts/bootstrap node")
        layout = {
            "etc_upper": str(workdir / "etc-upper"),
            "etc_work": str(workdir / "etc-work"),
            "catalog_dir": str(self.catalog_dir),
            "hub_etc": str(etc),
            "srv": str(self.srv),
            "proxy": [
                chp,
                "--ip",
                "127.0.0.1",
                "--port",
                str(self.proxy_port),
                "--api-ip",
                "127.0.0.1",
                "--api-port",
                str(self.proxy_api_port),
                "--default-target",
                f"http://hub:{HUB_PORT}",
                "--error-target",
                f"http://hub:{HUB_PORT}/hub/error",
            ],
            "hub": [
                str(python),
                "-m",
                "jupyterhub",
                "--config",
                "/usr/local/etc/jupyterhub/jupyterhub_config.py",
            ],
        }
        self.launcher = workdir / "launch.py"
        self.launcher.write_text(LAUNCHER.format(layout=layout))
        self.env["CONFIGPROXY_AUTH_TOKEN"] = env.get("CONFIGPROXY_AUTH_TOKEN", "")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def ledger_path(self) -> Path:
        return self.srv / "jupyterhub" / "gpuhub-ledger.sqlite"

    def write_catalog(self, catalog: Mapping[str, Any]) -> None:
        """Change the catalog as the kubelet changes a ConfigMap volume: the new file in a new
        directory, then one atomic rename of the `..data` link it is reached through."""
        stamp = f"..{time.time_ns()}"
        (self.catalog_dir / stamp).mkdir()
        (self.catalog_dir / stamp / "catalog.yaml").write_text(
            yaml.safe_dump(dict(catalog), sort_keys=False)
        )
        link = self.catalog_dir / "..data_tmp"
        link.unlink(missing_ok=True)
        link.symlink_to(stamp)
        os.replace(link, self.catalog_dir / "..data")
        entry = self.catalog_dir / "catalog.yaml"
        if not entry.is_symlink():
            entry.symlink_to("..data/catalog.yaml")

    def start(self, timeout: float = 120) -> None:
        with self.log_path.open("ab") as log:
            self._start(log, timeout)

    def _start(self, log: Any, timeout: float) -> None:
        self.process = subprocess.Popen(
            # A PID namespace too: when the launcher (its init) exits, the kernel ends every
            # process left in it (the gpuhub service runs in a session of its own).
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--pid",
                "--fork",
                sys.executable,
                str(self.launcher),
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ChartError(
                    f"the chart's hub exited ({self.process.returncode}):\n{self.log()}"
                )
            try:
                if requests.get(f"{self.url}hub/api/", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise ChartError(f"the chart's hub did not answer in {timeout:.0f}s:\n{self.log()}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def kill(self) -> None:
        """SIGKILL to the hub's pod, as a node failure or an OOM kill would: the hub, its proxy
        and the gpuhub service end at once (the launcher is their PID namespace's init)."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def log(self, lines: int = 150) -> str:
        return tail(self.log_path, lines)

    def wait(self, what: str, check: Any, timeout: float = 90) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = check()
            if found:
                return found
            time.sleep(0.5)
        raise ChartError(f"timed out waiting for {what}:\n{self.log()}")


def service_account_token(plane: ControlPlane, namespace: str, name: str) -> str:
    """A token of the ServiceAccount (TokenRequest), as the hub's pod would mount it."""
    body = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {"expirationSeconds": 3600},
    }
    answer = plane.api.create(f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token", body)
    token: str = answer["status"]["token"]
    return token


def dump(value: Any) -> str:
    return json.dumps(value, indent=1, sort_keys=True)
