"""A kubelet of our own for tests: it registers one Node and runs the first container of each pod
bound to it as a local process listening on the pod's own loopback address (127.x.y.z).

It fakes what a container runtime gives (no images, volumes, probes, isolation or restarts), so it
must never run outside tests. Run it as a process:

    python tests/k8s/process_kubelet.py --kubeconfig KUBECONFIG --node-manifest node.json \\
        --pod-cidr 127.101.0.0/16 --root-dir DIR

Inside a pod, 0.0.0.0 means "the pod's own address"; since our pods share the host's network,
every `0.0.0.0` in the container's args and env values is rewritten to the pod IP, and a Jupyter
server without --ip and without JUPYTERHUB_SERVICE_URL is given `--ip=<pod IP>`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import ctypes
import datetime
import ipaddress
import itertools
import json
import logging
import os
import re
import signal
import ssl
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

Json = dict[str, Any]
log = logging.getLogger("process-kubelet")

HOST_IP = "127.0.0.1"
HEARTBEAT_SECONDS = 10
LEASE_SECONDS = 40
STATUS_REPORT_SECONDS = 60
MAX_GRACE_SECONDS = 30
# The host's variables a pod process inherits, so that `python` and friends are found.
INHERITED_ENV = ("PATH", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV", "SYSTEMROOT")
JUPYTER_COMMANDS = frozenset(
    {"jupyterhub-singleuser", "jupyter", "jupyter-lab", "jupyter-server", "jupyter-notebook"}
)
GPU = "nvidia.com/gpu"
MIG_PREFIX = "nvidia.com/mig-"
WILDCARD = re.compile(r"(?<![\d.])0\.0\.0\.0(?![\d.])")
VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


class ApiError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:500]}")
        self.status = status


# --- pure functions: what to run and what to report ---------------------------------------------


def now_rfc3339(now: datetime.datetime) -> str:
    return now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro(now: datetime.datetime) -> str:
    return now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: known names are replaced, unknown ones kept, $$ gives $."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return VAR_REF.sub(replace, value)


def field_ref(pod: Json, path: str) -> str:
    """The value of a downward-API fieldRef such as status.podIP or metadata.labels['team']."""
    match = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if match:
        return str(pod["metadata"].get(match.group(1), {}).get(match.group(2), ""))
    value: Any = pod
    for part in path.split("."):
        value = value.get(part, "") if isinstance(value, dict) else ""
    if isinstance(value, list):  # status.podIPs
        return ",".join(item.get("ip", "") for item in value)
    return str(value)


def container_env(
    pod: Json, container: Json, pod_ip: str, refs: Mapping[tuple[str, str, str], str]
) -> dict[str, str]:
    """The container's environment: its `env` (values, fieldRefs, secret and config map keys
    found in `refs`), with POD_IP, HOSTNAME and 0.0.0.0 meaning the pod IP."""
    with_ip = {**pod, "status": {**pod.get("status", {}), "podIP": pod_ip, "hostIP": HOST_IP}}
    with_ip["status"]["podIPs"] = [{"ip": pod_ip}]
    env = {"POD_IP": pod_ip, "HOSTNAME": pod["metadata"]["name"]}
    for item in container.get("env", []):
        name = item["name"]
        if "value" in item:
            env[name] = expand(item["value"], env)
        elif "fieldRef" in item.get("valueFrom", {}):
            env[name] = field_ref(with_ip, item["valueFrom"]["fieldRef"]["fieldPath"])
        else:
            for kind in ("secretKeyRef", "configMapKeyRef"):
                ref = item.get("valueFrom", {}).get(kind)
                if ref and (kind, ref["name"], ref["key"]) in refs:
                    env[name] = refs[(kind, ref["name"], ref["key"])]
    return {name: WILDCARD.sub(pod_ip, value) for name, value in env.items()}


def container_argv(container: Json, env: Mapping[str, str], pod_ip: str) -> list[str]:
    """command + args with $(VAR) expanded, 0.0.0.0 as the pod IP, --ip for a bare Jupyter."""
    argv = [
        WILDCARD.sub(pod_ip, expand(part, env))
        for part in [*container.get("command", []), *container.get("args", [])]
    ]
    if not argv:
        return argv
    is_jupyter = os.path.basename(argv[0]) in JUPYTER_COMMANDS
    has_ip = any(arg == "--ip" or arg.startswith("--ip=") for arg in argv)
    if is_jupyter and not has_ip and "JUPYTERHUB_SERVICE_URL" not in env:
        argv.append(f"--ip={pod_ip}")
    return argv


def secret_refs(container: Json) -> list[tuple[str, str, str]]:
    refs = []
    for item in container.get("env", []):
        for kind in ("secretKeyRef", "configMapKeyRef"):
            ref = item.get("valueFrom", {}).get(kind)
            if ref:
                refs.append((kind, ref["name"], ref["key"]))
    return refs


def running_status(pod: Json, pod_ip: str, pid: int, now: datetime.datetime) -> Json:
    stamp = now_rfc3339(now)
    return {
        "phase": "Running",
        "hostIP": HOST_IP,
        "hostIPs": [{"ip": HOST_IP}],
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "startTime": stamp,
        "conditions": [
            {"type": kind, "status": "True", "lastTransitionTime": stamp}
            for kind in ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready")
        ]
        + [{"type": "PodScheduled", "status": "True", "lastTransitionTime": stamp}],
        "containerStatuses": [
            {
                "name": container["name"],
                "image": container.get("image", ""),
                "imageID": "",
                "containerID": f"process://{pid}" if index == 0 else "",
                "ready": index == 0,
                "started": index == 0,
                "restartCount": 0,
                "state": {"running": {"startedAt": stamp}}
                if index == 0
                else {"waiting": {"reason": "NotRunByProcessKubelet"}},
            }
            for index, container in enumerate(pod["spec"]["containers"])
        ],
    }


def terminated_status(pod: Json, exit_code: int, reason: str, now: datetime.datetime) -> Json:
    stamp = now_rfc3339(now)
    return {
        "phase": "Succeeded" if exit_code == 0 else "Failed",
        "conditions": [
            {"type": kind, "status": "False", "reason": "PodCompleted", "lastTransitionTime": stamp}
            for kind in ("ContainersReady", "Ready")
        ],
        "containerStatuses": [
            {
                "name": container["name"],
                "image": container.get("image", ""),
                "imageID": "",
                "ready": False,
                "started": False,
                "restartCount": 0,
                "state": {
                    "terminated": {"exitCode": exit_code, "reason": reason, "finishedAt": stamp}
                },
            }
            for container in pod["spec"]["containers"]
        ],
    }


def node_conditions(now: datetime.datetime, since: datetime.datetime) -> list[Json]:
    """The conditions of a healthy node, heartbeat `now`, unchanged `since` it registered."""
    stamp = now_rfc3339(now)
    conditions = [
        ("Ready", "True", "KubeletReady"),
        ("MemoryPressure", "False", "KubeletHasSufficientMemory"),
        ("DiskPressure", "False", "KubeletHasNoDiskPressure"),
        ("PIDPressure", "False", "KubeletHasSufficientPID"),
    ]
    return [
        {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": "process kubelet",
            "lastHeartbeatTime": stamp,
            "lastTransitionTime": now_rfc3339(since),
        }
        for kind, status, reason in conditions
    ]


def node_status(manifest: Json, now: datetime.datetime) -> Json:
    name = manifest["metadata"]["name"]
    return {
        **manifest.get("status", {}),
        "conditions": node_conditions(now, now),
        "addresses": [
            {"type": "InternalIP", "address": HOST_IP},
            {"type": "Hostname", "address": name},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
        "nodeInfo": {
            "architecture": "amd64",
            "operatingSystem": "linux",
            "kubeletVersion": "process-kubelet",
            "containerRuntimeVersion": "process://",
            "kernelVersion": "",
            "osImage": "",
            "machineID": "",
            "systemUUID": "",
            "bootID": "",
            "kubeProxyVersion": "",
        },
    }


def lease_manifest(node: str, node_uid: str, now: datetime.datetime) -> Json:
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": node,
            "namespace": "kube-node-lease",
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "Node", "name": node, "uid": node_uid}
            ],
        },
        "spec": {
            "holderIdentity": node,
            "leaseDurationSeconds": LEASE_SECONDS,
            "renewTime": now_micro(now),
        },
    }


# --- the API server -----------------------------------------------------------------------------


@dataclass(frozen=True)
class KubeConfig:
    server: str
    token: str | None
    ssl: ssl.SSLContext


def load_kubeconfig(path: Path) -> KubeConfig:
    """The current context's server and credentials (token or client certificate)."""
    doc = yaml.safe_load(path.read_text())
    context = next(c for c in doc["contexts"] if c["name"] == doc["current-context"])["context"]
    cluster = next(c for c in doc["clusters"] if c["name"] == context["cluster"])["cluster"]
    user = next(u for u in doc["users"] if u["name"] == context["user"])["user"]
    if "certificate-authority-data" in cluster:
        ca = base64.b64decode(cluster["certificate-authority-data"]).decode()
        context_ssl = ssl.create_default_context(cadata=ca)
    else:
        context_ssl = ssl.create_default_context(cafile=cluster.get("certificate-authority"))
    if "client-certificate" in user:
        context_ssl.load_cert_chain(user["client-certificate"], user["client-key"])
    return KubeConfig(cluster["server"].rstrip("/"), user.get("token"), context_ssl)


class Api:
    """JSON over HTTPS with aiohttp; `watch` yields watch events."""

    def __init__(self, config: KubeConfig, session: aiohttp.ClientSession) -> None:
        self.config = config
        self.session = session
        self.headers = {"Accept": "application/json"}
        if config.token:
            self.headers["Authorization"] = f"Bearer {config.token}"

    async def request(
        self,
        method: str,
        path: str,
        body: Json | None = None,
        *,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Json:
        headers = dict(self.headers)
        if body is not None:
            headers["Content-Type"] = content_type
        async with self.session.request(
            method,
            self.config.server + path,
            data=json.dumps(body) if body is not None else None,
            params=params,
            headers=headers,
            ssl=self.config.ssl,
            timeout=aiohttp.ClientTimeout(total=30),
        ) as response:
            text = await response.text()
            if response.status >= 400:
                raise ApiError(response.status, text)
            result: Json = json.loads(text) if text else {}
            return result

    async def merge_patch(self, path: str, body: Json) -> Json:
        return await self.request("PATCH", path, body, content_type="application/merge-patch+json")

    async def watch(self, path: str, params: Mapping[str, str]) -> AsyncIterator[Json]:
        async with self.session.get(
            self.config.server + path,
            params={**params, "watch": "true"},
            headers=self.headers,
            ssl=self.config.ssl,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        ) as response:
            if response.status >= 400:
                raise ApiError(response.status, await response.text())
            async for line in response.content:
                if line.strip():
                    yield json.loads(line)


# --- the kubelet --------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """Runs in the child before exec: get SIGKILL if the kubelet dies, so pods never leak."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


@dataclass
class RunningPod:
    namespace: str
    name: str
    uid: str
    ip: str
    process: asyncio.subprocess.Process | None = None
    stopping: bool = False
    finished: asyncio.Event = field(default_factory=asyncio.Event)


class Devices:
    """What the NVIDIA device plugin (mixed MIG strategy) and container toolkit give a pod here:
    the node's GPUs and MIG devices, as a fake NVML (spawner_ext/fakenvml, compiled with gcc)
    whose config file tests may rewrite (`fake-nvml.conf` in the kubelet's directory), and for
    each container that many of its own as its `nvidia.com/gpu` and `nvidia.com/mig-<profile>`
    limits ask, named in NVIDIA_VISIBLE_DEVICES by UUID (`GPU-...`, `MIG-...`).

    The node's capacity says how many: `nvidia.com/gpu` full GPUs, and for each
    `nvidia.com/mig-<profile>` (e.g. mig-1g.10gb) that many MIG devices, on one parent GPU in
    MIG mode per profile. Without gcc pods get no GPUs (as on a node without the device plugin).
    """

    def __init__(self, node: str, manifest: Json, root: Path) -> None:
        from spawner_ext import fakenvml

        capacity = manifest.get("status", {}).get("capacity", {})
        product = manifest["metadata"].get("labels", {}).get("nvidia.com/gpu.product", "GPU")
        name = product.replace("-", " ")
        count = int(capacity.get(GPU, 0) or 0)
        self.free: dict[str, list[str]] = {GPU: [f"GPU-{node}-{i}" for i in range(count)]}
        gpus = [fakenvml.FakeGPU(uuid, name, 24 * 2**30) for uuid in self.free[GPU]]
        for resource, amount in sorted(capacity.items()):
            profile = resource.removeprefix(MIG_PREFIX)
            if not resource.startswith(MIG_PREFIX) or not int(amount or 0):
                continue
            uuids = [f"MIG-{node}-{profile}-{i}" for i in range(int(amount))]
            memory = mig_memory(profile)
            migs = tuple(fakenvml.FakeMIG(u, f"{name} MIG {profile}", memory) for u in uuids)
            parent = f"GPU-{node}-{profile}-parent"
            gpus.append(fakenvml.FakeGPU(parent, name, memory * len(uuids), migs=migs))
            self.free[resource] = uuids
        self.held: dict[str, list[tuple[str, str]]] = {}
        self.config = root / "fake-nvml.conf"
        self.env: dict[str, str] = {}
        if not gpus:
            return
        try:
            library = fakenvml.build()
        except fakenvml.BuildError as error:
            log.warning("no GPUs for pods: %s", error)
            return
        fakenvml.write_config(self.config, fakenvml.FakeNVML(tuple(gpus)))
        self.env = fakenvml.environment(library, self.config, os.environ)

    def allocate(self, uid: str, container: Json) -> dict[str, str]:
        limits = container.get("resources", {}).get("limits", {})
        wanted = {r: int(limits.get(r, 0) or 0) for r in self.free if limits.get(r)}
        if not wanted or not self.env:
            return {}
        if any(len(self.free[r]) < n for r, n in wanted.items()):
            return {}
        held = [(r, self.free[r].pop(0)) for r, n in wanted.items() for _ in range(n)]
        self.held[uid] = held
        return {**self.env, "NVIDIA_VISIBLE_DEVICES": ",".join(uuid for _, uuid in held)}

    def release(self, uid: str) -> None:
        for resource, uuid in self.held.pop(uid, []):
            self.free[resource].append(uuid)


def mig_memory(profile: str) -> int:
    """Bytes of memory of a MIG profile ('1g.10gb' -> 10 GiB)."""
    found = re.search(r"\.(\d+)gb", profile)
    return int(found.group(1)) * 2**30 if found else 2**30


class Kubelet:
    def __init__(self, api: Api, manifest: Json, pod_cidr: str, root: Path) -> None:
        self.api = api
        self.manifest = manifest
        self.node = manifest["metadata"]["name"]
        self.root = root
        self.devices = Devices(self.node, manifest, root)
        self.pods: dict[str, RunningPod] = {}
        # The first address of the range is left out; the rest are handed out in order.
        self.free_ips = (
            str(ip) for ip in itertools.islice(ipaddress.ip_network(pod_cidr).hosts(), 1, None)
        )
        self.released_ips: list[str] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.registered = datetime.datetime.now(datetime.UTC)

    def spawn(self, coroutine: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def next_ip(self) -> str:
        return self.released_ips.pop(0) if self.released_ips else next(self.free_ips)

    async def run(self) -> None:
        node_uid = await self.register()
        self.spawn(self.heartbeat(node_uid))
        while True:
            try:
                await self.list_and_watch()
            except (aiohttp.ClientError, ApiError, TimeoutError, ValueError) as error:
                log.warning("watch interrupted (%s); listing again", error)
                await asyncio.sleep(1)

    async def register(self) -> str:
        now = self.registered = datetime.datetime.now(datetime.UTC)
        manifest = {**self.manifest, "status": node_status(self.manifest, now)}
        try:
            created = await self.api.request("POST", "/api/v1/nodes", manifest)
        except ApiError as error:
            if error.status != 409:
                raise
            created = await self.api.request("GET", f"/api/v1/nodes/{self.node}")
        await self.api.merge_patch(
            f"/api/v1/nodes/{self.node}/status", {"status": manifest["status"]}
        )
        log.info("registered node %s", self.node)
        uid: str = created["metadata"]["uid"]
        return uid

    async def heartbeat(self, node_uid: str) -> None:
        """Renews the node's Lease often and reposts its status now and then, as kubelets do."""
        last_status = asyncio.get_running_loop().time()
        while True:
            now = datetime.datetime.now(datetime.UTC)
            lease = lease_manifest(self.node, node_uid, now)
            path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.node}"
            try:
                try:
                    await self.api.merge_patch(path, {"spec": lease["spec"]})
                except ApiError as error:
                    if error.status != 404:
                        raise
                    await self.api.request(
                        "POST",
                        "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                        lease,
                    )
                if asyncio.get_running_loop().time() - last_status > STATUS_REPORT_SECONDS:
                    await self.api.merge_patch(
                        f"/api/v1/nodes/{self.node}/status",
                        {"status": {"conditions": node_conditions(now, self.registered)}},
                    )
                    last_status = asyncio.get_running_loop().time()
            except (aiohttp.ClientError, ApiError, TimeoutError) as error:
                log.warning("heartbeat failed: %s", error)
            await asyncio.sleep(HEARTBEAT_SECONDS)

    async def list_and_watch(self) -> None:
        selector = {"fieldSelector": f"spec.nodeName={self.node}"}
        listed = await self.api.request("GET", "/api/v1/pods", params=selector)
        seen = set()
        for pod in listed.get("items", []):
            seen.add(pod["metadata"]["uid"])
            await self.sync_pod(pod)
        for uid, running in list(self.pods.items()):
            if uid not in seen and not running.stopping:
                self.spawn(self.stop_pod(running, delete=False))
        params = {
            **selector,
            "resourceVersion": listed["metadata"]["resourceVersion"],
            "allowWatchBookmarks": "true",
            "timeoutSeconds": "300",
        }
        async for event in self.api.watch("/api/v1/pods", params):
            kind, pod = event["type"], event["object"]
            if kind == "ERROR":
                raise ApiError(pod.get("code", 500), pod.get("message", ""))
            if kind == "BOOKMARK":
                continue
            if kind == "DELETED":
                gone = self.pods.get(pod["metadata"]["uid"])
                if gone and not gone.stopping:
                    self.spawn(self.stop_pod(gone, delete=False))
                continue
            await self.sync_pod(pod)

    async def sync_pod(self, pod: Json) -> None:
        uid = pod["metadata"]["uid"]
        running = self.pods.get(uid)
        if pod["metadata"].get("deletionTimestamp"):
            if running is None:
                running = RunningPod(
                    pod["metadata"]["namespace"], pod["metadata"]["name"], uid, ip=""
                )
                self.pods[uid] = running
            if not running.stopping:
                grace = pod["metadata"].get("deletionGracePeriodSeconds") or 0
                self.spawn(self.stop_pod(running, delete=True, grace=grace))
            return
        if running is None and pod.get("status", {}).get("phase") in (None, "Pending"):
            await self.start_pod(pod)

    async def start_pod(self, pod: Json) -> None:
        meta = pod["metadata"]
        running = RunningPod(meta["namespace"], meta["name"], meta["uid"], self.next_ip())
        self.pods[running.uid] = running
        container = pod["spec"]["containers"][0]
        refs = await self.fetch_refs(running.namespace, container)
        env = {**container_env(pod, container, running.ip, refs)}
        env.update(self.devices.allocate(running.uid, container))
        argv = container_argv(container, env, running.ip)
        # A directory of its own as working directory and HOME; the container's workingDir is a
        # path inside an image we do not have, so it is not used.
        workdir = self.root / "pods" / running.uid
        await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
        inherited = {name: os.environ[name] for name in INHERITED_ENV if name in os.environ}
        # Our own Python's bin directory first, so `jupyterhub-singleuser` & co. are found; output
        # flushed line by line, so that a pod's log is complete when it is killed.
        path = inherited.get("PATH", os.defpath)
        inherited["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{path}"
        inherited["HOME"] = str(workdir)
        inherited["PYTHONUNBUFFERED"] = "1"
        log_path = self.root / "pods" / f"{running.namespace}_{running.name}.log"
        log.info("starting %s/%s at %s: %s", running.namespace, running.name, running.ip, argv)
        now = datetime.datetime.now(datetime.UTC)
        try:
            if not argv:
                raise FileNotFoundError("the container has no command: images are not run here")
            with log_path.open("ab") as output:
                running.process = await asyncio.create_subprocess_exec(
                    *argv,
                    env={**inherited, **env},
                    cwd=workdir,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=output,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                )
        except OSError as error:
            log.warning("could not start %s/%s: %s", running.namespace, running.name, error)
            running.finished.set()
            status = terminated_status(pod, 128, "StartError", now)
            status["message"] = str(error)
            await self.patch_status(running, status)
            return
        await self.patch_status(running, running_status(pod, running.ip, running.process.pid, now))
        self.spawn(self.wait_pod(running, pod))

    async def fetch_refs(self, namespace: str, container: Json) -> dict[tuple[str, str, str], str]:
        refs = {}
        for kind, name, key in secret_refs(container):
            plural = "secrets" if kind == "secretKeyRef" else "configmaps"
            try:
                obj = await self.api.request(
                    "GET", f"/api/v1/namespaces/{namespace}/{plural}/{name}"
                )
            except ApiError as error:
                log.warning("%s %s/%s: %s", kind, namespace, name, error)
                continue
            value = obj.get("data", {}).get(key)
            if value is not None:
                refs[(kind, name, key)] = (
                    base64.b64decode(value).decode() if plural == "secrets" else value
                )
        return refs

    async def wait_pod(self, running: RunningPod, pod: Json) -> None:
        assert running.process is not None
        code = await running.process.wait()
        running.finished.set()
        log.info("%s/%s exited with %s", running.namespace, running.name, code)
        if not running.stopping:
            exit_code = code if code >= 0 else 128 - code
            reason = "Completed" if code == 0 else "Error"
            now = datetime.datetime.now(datetime.UTC)
            await self.patch_status(running, terminated_status(pod, exit_code, reason, now))

    async def patch_status(self, running: RunningPod, status: Json) -> None:
        path = f"/api/v1/namespaces/{running.namespace}/pods/{running.name}/status"
        try:
            await self.api.merge_patch(path, {"status": status})
        except ApiError as error:
            log.warning("status of %s/%s: %s", running.namespace, running.name, error)

    async def stop_pod(self, running: RunningPod, *, delete: bool, grace: int = 0) -> None:
        """Terminates the pod's process (SIGTERM, then SIGKILL after the grace period) and, for a
        pod being deleted, completes the deletion as a kubelet does (delete with grace 0)."""
        running.stopping = True
        await terminate(running, min(grace, MAX_GRACE_SECONDS))
        if delete:
            path = f"/api/v1/namespaces/{running.namespace}/pods/{running.name}"
            body = {
                "kind": "DeleteOptions",
                "apiVersion": "v1",
                "gracePeriodSeconds": 0,
                "preconditions": {"uid": running.uid},
            }
            try:
                await self.api.request("DELETE", path, body)
            except ApiError as error:
                if error.status not in (404, 409):
                    log.warning("deleting %s/%s: %s", running.namespace, running.name, error)
        if self.pods.pop(running.uid, None) is running and running.ip:
            self.released_ips.append(running.ip)
        self.devices.release(running.uid)
        log.info("stopped %s/%s", running.namespace, running.name)

    async def shutdown(self) -> None:
        await asyncio.gather(
            *(terminate(running, 5) for running in self.pods.values()), return_exceptions=True
        )


async def terminate(running: RunningPod, grace: float) -> None:
    process = running.process
    if process is None or process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(running.finished.wait(), timeout=max(grace, 1))
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()


async def main_async(manifest: Json, config: KubeConfig, pod_cidr: str, root: Path) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with aiohttp.ClientSession(read_bufsize=2**22) as session:
        kubelet = Kubelet(Api(config, session), manifest, pod_cidr, root)
        runner = asyncio.create_task(kubelet.run())
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
        runner.cancel()
        for task in list(kubelet.tasks):
            task.cancel()
        await kubelet.shutdown()
        if runner in done:
            runner.result()  # re-raises why the kubelet stopped


def plain_node_manifest(name: str, gpus: int) -> Json:
    """A Node with `gpus` GPUs and the GPU taint, for --node without --node-manifest."""
    resources = {"cpu": "64", "memory": "256Gi", "pods": "110", "nvidia.com/gpu": str(gpus)}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {"kubernetes.io/hostname": name, "nvidia.com/gpu.present": "true"},
        },
        "spec": {"taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]},
        "status": {"capacity": resources, "allocatable": resources},
    }


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kubeconfig", required=True)
    node = parser.add_mutually_exclusive_group(required=True)
    node.add_argument("--node-manifest", help="JSON file of the Node to register")
    node.add_argument("--node", help="name of a plain GPU node to register (see --gpus)")
    parser.add_argument("--gpus", type=int, default=1, help="GPUs of --node (default 1)")
    parser.add_argument("--pod-cidr", required=True, help="loopback range for pod IPs")
    parser.add_argument("--root-dir", required=True, help="pod logs and working directories")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.node_manifest:
        manifest: Json = json.loads(Path(args.node_manifest).read_text())
    else:
        manifest = plain_node_manifest(args.node, args.gpus)
    root = Path(args.root_dir)
    (root / "pods").mkdir(parents=True, exist_ok=True)
    config = load_kubeconfig(Path(args.kubeconfig))
    asyncio.run(main_async(manifest, config, args.pod_cidr, root))


if __name__ == "__main__":
    main()
