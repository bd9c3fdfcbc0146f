"""A real Kubernetes control plane on loopback for tests: etcd, kube-apiserver, kube-scheduler,
kube-controller-manager and kwok, from the binaries that scripts/build-k8s builds.

It only ever listens on 127.0.0.1 and writes only under its own temporary directory. It is plain
Python (no pytest), so a script or a benchmark can start one too:

    with ControlPlane(build_binaries()) as cp:
        cp.add_kwok_gpu_nodes(2)
        print(cp.kubeconfig)
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import functools
import ipaddress
import itertools
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self, TypeVar

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build-k8s"
PROCESS_KUBELET = Path(__file__).resolve().with_name("process_kubelet.py")

BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
SERVICE_CIDR = "10.96.0.0/16"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
PROCESS_KUBELET_ANNOTATION = "gpuhub.test/process-kubelet"
GPU_RESOURCE = "nvidia.com/gpu"
DEFAULT_SERVICE_ACCOUNT = "/api/v1/namespaces/default/serviceaccounts/default"
GPU_TAINT = {"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}

Json = dict[str, Any]
T = TypeVar("T")

METRIC_SAMPLE = re.compile(r"^(?P<name>[a-z_:]+)\{(?P<labels>[^}]*)\} (?P<value>\S+)$")
POD_CREATE = ('resource="pods"', 'subresource=""', 'verb="POST"')
"""The labels of the API server's samples about pod creates (not its pods/binding)."""


def metric_sum(samples: list[tuple[str, str, float]], name: str, *labels: str) -> float:
    """The sum of the samples (KubeApi.metrics) of metric `name` whose labels include every
    one of `labels` (each as written in the exposition, e.g. 'code="409"')."""
    return sum(v for n, found, v in samples if n == name and all(x in found for x in labels))


class TestbedError(RuntimeError):
    """The control plane or one of its nodes did not come up; the message names which and why."""

    __test__ = False  # not a test class, despite the name


class ApiError(Exception):
    """The API server answered with an error status; `body` is its decoded Status object."""

    def __init__(self, status: int, body: Json) -> None:
        super().__init__(f"HTTP {status}: {body.get('reason', '')}: {body.get('message', body)}")
        self.status = status
        self.body = body


# --- binaries -----------------------------------------------------------------------------------


def build_binaries(*, build: bool = True) -> Path:
    """Returns the directory with the control plane binaries, building them first if missing.

    The first build compiles Kubernetes from source and takes tens of minutes.
    """
    args = [str(BUILD_SCRIPT)] if build else [str(BUILD_SCRIPT), "--print-bin-dir"]
    done = subprocess.run(args, check=False, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise TestbedError(f"{BUILD_SCRIPT} failed with exit status {done.returncode}; see above")
    bin_dir = Path(done.stdout.strip().splitlines()[-1])
    missing = [name for name in BINARIES if not (bin_dir / name).is_file()]
    if missing:
        raise TestbedError(f"{bin_dir} lacks {', '.join(missing)}; run {BUILD_SCRIPT}")
    return bin_dir


# --- pure builders ------------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuNodeSpec:
    """What a simulated GPU node offers, labelled and tainted like a real GPU node pool.

    The labels follow NVIDIA's GPU feature discovery; the taint is the one GPU pools carry so that
    only pods tolerating it land there.
    """

    product: str = "NVIDIA-H100-80GB-HBM3"
    gpus: int = 8
    gpu_memory_mib: int = 81559
    mig_resources: Mapping[str, int] = field(default_factory=lambda: {"nvidia.com/mig-1g.10gb": 7})
    cpu: str = "128"
    memory: str = "1Ti"
    pods: int = 110
    labels: Mapping[str, str] = field(default_factory=dict)
    tainted: bool = True


# GPU node pools for tests: 8 H100s with MIG 1g.10gb slices, 4 A100s with 1g.5gb slices, 4 L4s.
H100 = GpuNodeSpec()
A100 = GpuNodeSpec(
    product="NVIDIA-A100-SXM4-40GB",
    gpus=4,
    gpu_memory_mib=40960,
    mig_resources={"nvidia.com/mig-1g.5gb": 7},
)
L4 = GpuNodeSpec(product="NVIDIA-L4", gpus=4, gpu_memory_mib=23034, mig_resources={})
POOL_LABEL = "gpuhub.test/pool"
"""A node label that keeps one test's kwok nodes (its pool) to that test's pods."""
GPU_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
"""What a pod needs to land on a GPU node's taint."""


def pooled_h100_type(pool: str) -> dict[str, Any]:
    """The catalog's `h100-80gb` GPU type, its pods kept to the nodes labelled with `pool`."""
    return {
        "display_name": "NVIDIA H100 80GB",
        "resource": "nvidia.com/gpu",
        "price_per_hour": 4.10,
        "node_selector": {"nvidia.com/gpu.product": H100.product, POOL_LABEL: pool},
        "tolerations": GPU_TOLERATIONS,
    }


def gpu_node_labels(name: str, spec: GpuNodeSpec) -> dict[str, str]:
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": spec.product,
        "nvidia.com/gpu.count": str(spec.gpus),
        "nvidia.com/gpu.memory": str(spec.gpu_memory_mib),
        "nvidia.com/mig.strategy": "mixed" if spec.mig_resources else "none",
    }
    labels.update(spec.labels)
    return labels


def gpu_node_manifest(name: str, spec: GpuNodeSpec, annotations: Mapping[str, str]) -> Json:
    """A Node with the GPUs of `spec` in capacity and allocatable (Nodes keep status on create)."""
    resources = {
        "cpu": spec.cpu,
        "memory": spec.memory,
        "pods": str(spec.pods),
        "ephemeral-storage": "1Ti",
        GPU_RESOURCE: str(spec.gpus),
        **{resource: str(count) for resource, count in spec.mig_resources.items()},
    }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": gpu_node_labels(name, spec),
            "annotations": dict(annotations),
        },
        "spec": {"taints": [GPU_TAINT] if spec.tainted else []},
        "status": {"capacity": resources, "allocatable": dict(resources)},
    }


def gpu_pod_manifest(
    name: str, product: str, gpus: int = 1, command: list[str] | None = None
) -> Json:
    """A pod asking for `gpus` GPUs of `product`, tolerating the GPU taint, like a GPU profile."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"nvidia.com/gpu.product": product},
            "tolerations": [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}],
            "terminationGracePeriodSeconds": 5,
            "containers": [
                {
                    "name": "notebook",
                    "image": "gpuhub/test:none",
                    "command": command or ["sleep", "infinity"],
                    "resources": {
                        "requests": {GPU_RESOURCE: str(gpus)},
                        "limits": {GPU_RESOURCE: str(gpus)},
                    },
                }
            ],
        },
    }


# kwok fakes the kubelet of the nodes annotated KWOK_ANNOTATION=fake by running these stages:
# a node becomes Ready, a bound pod becomes Running, a deleted pod goes away. Node leases (the
# heartbeat that node-lifecycle watches) come from kwok's --node-lease-duration-seconds.
KWOK_STAGES = """\
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata: {name: gpuhub-node-ready}
spec:
  resourceRef: {apiGroup: v1, kind: Node}
  selector:
    matchExpressions:
    - key: '.status.conditions.[] | select( .type == "Ready" ) | .status'
      operator: NotIn
      values: ['True']
  next:
    statusTemplate: |
      {{ $now := Now }}
      conditions:
      {{ range NodeConditions }}
      - type: {{ .type | Quote }}
        status: {{ .status | Quote }}
        reason: {{ .reason | Quote }}
        message: {{ .message | Quote }}
        lastHeartbeatTime: {{ $now | Quote }}
        lastTransitionTime: {{ $now | Quote }}
      {{ end }}
      addresses:
      - {type: InternalIP, address: {{ NodeIP | Quote }}}
      - {type: Hostname, address: {{ .metadata.name | Quote }}}
      nodeInfo:
        architecture: amd64
        operatingSystem: linux
        kubeletVersion: {{ printf "kwok-%s" Version | Quote }}
        containerRuntimeVersion: {{ printf "kwok-%s" Version | Quote }}
      phase: Running
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata: {name: gpuhub-pod-running}
spec:
  resourceRef: {apiGroup: v1, kind: Pod}
  selector:
    matchExpressions:
    - {key: '.metadata.deletionTimestamp', operator: DoesNotExist}
    - {key: '.status.phase', operator: In, values: [Pending]}
  next:
    statusTemplate: |
      {{ $now := Now }}
      {{ $ip := PodIPWith .spec.nodeName false .metadata.uid .metadata.name .metadata.namespace }}
      phase: Running
      startTime: {{ $now | Quote }}
      hostIP: {{ NodeIPWith .spec.nodeName | Quote }}
      podIP: {{ $ip | Quote }}
      podIPs: [{ip: {{ $ip | Quote }}}]
      conditions:
      {{ range list "PodReadyToStartContainers" "Initialized" "ContainersReady" "Ready" }}
      - {type: {{ . }}, status: "True", lastTransitionTime: {{ $now | Quote }}}
      {{ end }}
      containerStatuses:
      {{ range .spec.containers }}
      - name: {{ .name | Quote }}
        image: {{ .image | Quote }}
        imageID: ""
        ready: true
        started: true
        restartCount: 0
        state: {running: {startedAt: {{ $now | Quote }}}}
      {{ end }}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata: {name: gpuhub-pod-delete}
spec:
  resourceRef: {apiGroup: v1, kind: Pod}
  selector:
    matchExpressions:
    - {key: '.metadata.deletionTimestamp', operator: Exists}
  next:
    delete: true
"""


def kubeconfig_document(server: str, ca_file: Path, token: str) -> Json:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "gpuhub-test",
                "cluster": {"server": server, "certificate-authority": str(ca_file)},
            }
        ],
        "users": [{"name": "admin", "user": {"token": token}}],
        "contexts": [
            {
                "name": "gpuhub-test",
                "context": {"cluster": "gpuhub-test", "user": "admin", "namespace": "default"},
            }
        ],
        "current-context": "gpuhub-test",
    }


# --- certificates -------------------------------------------------------------------------------


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    sans: list[x509.GeneralName],
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer[0].subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    serving_cert: Path
    serving_key: Path
    sa_key: Path
    sa_pub: Path


def write_pki(directory: Path) -> Pki:
    """A CA, a serving certificate for 127.0.0.1 and a service-account signing key pair (ECDSA)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("gpuhub-test-ca", ca_key, None, [])
    serving_key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("10.96.0.1")),
        x509.DNSName("localhost"),
        x509.DNSName("kubernetes.default.svc"),
    ]
    serving = _certificate("kube-apiserver", serving_key, (ca, ca_key), sans)
    sa_key = ec.generate_private_key(ec.SECP256R1())
    pki = Pki(
        ca_cert=directory / "ca.crt",
        serving_cert=directory / "apiserver.crt",
        serving_key=directory / "apiserver.key",
        sa_key=directory / "sa.key",
        sa_pub=directory / "sa.pub",
    )
    pki.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.serving_cert.write_bytes(serving.public_bytes(serialization.Encoding.PEM))
    pki.serving_key.write_bytes(_pem_key(serving_key))
    pki.sa_key.write_bytes(_pem_key(sa_key))
    pki.sa_pub.write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return pki


# --- a small synchronous API client -------------------------------------------------------------


class KubeApi:
    """Plain HTTPS against the API server with a bearer token; JSON in, JSON out."""

    def __init__(self, server: str, token: str, ca_file: Path) -> None:
        self.server = server.rstrip("/")
        self.token = token
        self.ca_file = ca_file
        self._ssl: ssl.SSLContext | None = None  # made on first use: the CA may not exist yet

    def request(
        self,
        method: str,
        path: str,
        body: Json | None = None,
        *,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        timeout: float = 30,
    ) -> Json:
        url = self.server + path
        if params:
            url += "?" + urllib.parse.urlencode(params)
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", content_type)
        try:
            raw = self._read(request, timeout)
        except urllib.error.HTTPError as error:
            raw = error.read()
            error.close()
            try:
                decoded = json.loads(raw)
            except ValueError:
                decoded = {"message": raw.decode(errors="replace")}
            raise ApiError(error.code, decoded) from None
        text = raw.decode()
        if not text.lstrip().startswith("{"):
            return {"text": text}
        result: Json = json.loads(text)
        return result

    def get(self, path: str, **params: str) -> Json:
        return self.request("GET", path, params=params)

    def _read(self, request: urllib.request.Request, timeout: float) -> bytes:
        """The body of `request`, sent with the token over TLS checked against the CA."""
        request.add_header("Authorization", f"Bearer {self.token}")
        if self._ssl is None:
            self._ssl = ssl.create_default_context(cafile=str(self.ca_file))
        with urllib.request.urlopen(request, timeout=timeout, context=self._ssl) as response:
            body: bytes = response.read()
            return body

    def watch(self, path: str, resource_version: str, seconds: int) -> list[Json]:
        """Every watch event on the collection at `path` after `resource_version`, for
        `seconds` (the API server ends the watch then): what happened, not only what is left."""
        query = {"watch": "1", "resourceVersion": resource_version, "timeoutSeconds": str(seconds)}
        url = f"{self.server}{path}?{urllib.parse.urlencode(query)}"
        raw = self._read(urllib.request.Request(url), seconds + 30)
        return [json.loads(line) for line in raw.splitlines() if line.strip()]

    def metrics(self) -> list[tuple[str, str, float]]:
        """The API server's /metrics samples with labels, as (name, labels, value)."""
        found = []
        for line in str(self.get("/metrics")["text"]).splitlines():
            match = METRIC_SAMPLE.match(line)
            if match is not None:
                found.append((match["name"], match["labels"], float(match["value"])))
        return found

    def gone(self, path: str) -> bool:
        """True when the object at `path` does not exist (404)."""
        try:
            self.get(path)
        except ApiError as error:
            if error.status == 404:
                return True
            raise
        return False

    def create(self, path: str, body: Json) -> Json:
        return self.request("POST", path, body)

    def merge_patch(self, path: str, body: Json) -> Json:
        return self.request("PATCH", path, body, content_type="application/merge-patch+json")

    def delete(self, path: str, grace_period_seconds: int | None = None) -> Json:
        body = None
        if grace_period_seconds is not None:
            body = {"kind": "DeleteOptions", "gracePeriodSeconds": grace_period_seconds}
        return self.request("DELETE", path, body)


def wait_for(
    what: str, check: Callable[[], T | None], timeout: float = 60, interval: float = 0.25
) -> T:
    """Calls `check` until it returns something other than None (or False), at most `timeout` s."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
        except (ApiError, OSError) as error:
            last_error, result = error, None
        if result is not None and result is not False:
            return result
        time.sleep(interval)
    raise TestbedError(f"timed out after {timeout}s waiting for {what} (last error: {last_error})")


# --- processes ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Component:
    """One process of the testbed and the file its stdout and stderr go to."""

    name: str
    args: list[str]
    log: Path
    process: subprocess.Popen[bytes] | None = None
    on_stop: list[Callable[[], None]] = field(default_factory=list)

    def start(self, env: Mapping[str, str] | None = None) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # our own process group, so stop() reaches children
                env=dict(env) if env is not None else None,
            )

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise TestbedError(
                f"{self.name} exited with status {self.process.returncode}; "
                f"last lines of {self.log}:\n{tail(self.log)}"
            )

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM to the process group, SIGKILL after `timeout` seconds; then the on_stop calls."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # whatever it left behind in its group
        while self.on_stop:
            self.on_stop.pop()()


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as error:
        return f"({error})"


POD_RANGE_LOCKS = Path(tempfile.gettempdir()) / "gpuhub-k8s-pod-ranges"


def claim_pod_cidr() -> tuple[str, IO[bytes]]:
    """A /16 of loopback addresses (127.N.0.0/16, N in 100..254) for one process kubelet's pods.

    The range stays ours while the returned file is open: a lock file per range keeps kubelets of
    other test processes on this machine out of it.
    """
    POD_RANGE_LOCKS.mkdir(exist_ok=True)
    for octet in range(100, 255):
        lock = (POD_RANGE_LOCKS / f"127.{octet}.lock").open("ab")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        return f"127.{octet}.0.0/16", lock
    raise TestbedError(f"all loopback pod ranges are taken (locks in {POD_RANGE_LOCKS})")


# --- the control plane --------------------------------------------------------------------------


class ControlPlane:
    """etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok on 127.0.0.1.

    Use as a context manager, or call start() and stop(). After start(): `kubeconfig` (a file
    with an admin token), `server`, `token`, `ca_file`, `api` (a KubeApi) and `logs` (one file
    per component) are set; the default ServiceAccount exists, so pods can be created.
    """

    def __init__(self, bin_dir: Path, workdir: Path | None = None) -> None:
        self.bin_dir = bin_dir
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="gpuhub-k8s-"))
        self.token = secrets.token_urlsafe(24)
        self.kubeconfig = self.workdir / "kubeconfig"
        self.ca_file = self.workdir / "pki" / "ca.crt"
        self.apiserver_port = free_port()
        self.server = f"https://127.0.0.1:{self.apiserver_port}"
        self.api = KubeApi(self.server, self.token, self.ca_file)
        self.components: dict[str, Component] = {}
        self._node_names = itertools.count()
        self._id = secrets.token_hex(2)

    @property
    def logs(self) -> dict[str, Path]:
        return {name: component.log for name, component in self.components.items()}

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        pki = write_pki(self.workdir / "pki")
        (self.workdir / "logs").mkdir(exist_ok=True)
        self._start_etcd()
        self._start_apiserver(pki)
        self.kubeconfig.write_text(
            yaml.safe_dump(kubeconfig_document(self.server, pki.ca_cert, self.token))
        )
        self._start_controller_manager(pki)
        self._start_scheduler()
        self._start_kwok()
        wait_for(
            "the default ServiceAccount (service-account controller)",
            lambda: self._alive() and self.api.get(DEFAULT_SERVICE_ACCOUNT),
        )

    def stop(self) -> None:
        """Stops every component, newest first, and removes the work directory if we made it."""
        for component in reversed(list(self.components.values())):
            component.stop()
        if self._own_workdir and os.environ.get("GPUHUB_KEEP_K8S_WORKDIR") != "1":
            shutil.rmtree(self.workdir, ignore_errors=True)

    def logs_report(self, lines: int = 30) -> str:
        """The last lines of each component's log, for a failing test to print."""
        return "\n".join(
            f"--- {name} ({log}) ---\n{tail(log, lines)}" for name, log in self.logs.items()
        )

    def _alive(self) -> bool:
        for component in self.components.values():
            component.check_alive()
        return True

    def _component(self, name: str, args: list[str]) -> Component:
        component = Component(name, args, self.workdir / "logs" / f"{name}.log")
        self.components[name] = component
        component.start()
        return component

    def _start_etcd(self) -> None:
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        self._component(
            "etcd",
            [
                str(self.bin_dir / "etcd"),
                "--name=default",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=default=http://127.0.0.1:{peer}",
                "--unsafe-no-fsync=true",  # throwaway data: skip fsync, much faster on CI disks
                "--log-level=warn",
            ],
        )

        def healthy() -> bool:
            self._alive()
            with urllib.request.urlopen(f"{self.etcd_url}/health", timeout=2) as response:
                return bool(json.loads(response.read()).get("health") == "true")

        wait_for("etcd /health", healthy, timeout=30)

    def _start_apiserver(self, pki: Pki) -> None:
        tokens = self.workdir / "tokens.csv"
        tokens.write_text(f'{self.token},admin,admin-uid,"system:masters"\n')
        self._component(
            "kube-apiserver",
            [
                str(self.bin_dir / "kube-apiserver"),
                f"--etcd-servers={self.etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.apiserver_port}",
                f"--cert-dir={self.workdir / 'pki'}",
                f"--tls-cert-file={pki.serving_cert}",
                f"--tls-private-key-file={pki.serving_key}",
                f"--client-ca-file={pki.ca_cert}",
                f"--token-auth-file={tokens}",
                "--authorization-mode=RBAC",
                f"--service-account-issuer={SA_ISSUER}",
                f"--service-account-key-file={pki.sa_pub}",
                f"--service-account-signing-key-file={pki.sa_key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                # Endpoints may not be loopback addresses, so no `kubernetes` Service endpoints.
                "--endpoint-reconciler-type=none",
                "--profiling=false",
            ],
        )

        def ready() -> bool:
            self._alive()
            return self.api.get("/readyz").get("text") == "ok"

        wait_for("kube-apiserver /readyz", ready, timeout=90)

    def _start_controller_manager(self, pki: Pki) -> None:
        self._component(
            "kube-controller-manager",
            [
                str(self.bin_dir / "kube-controller-manager"),
                f"--kubeconfig={self.kubeconfig}",
                "--bind-address=127.0.0.1",
                "--secure-port=0",
                "--leader-elect=false",
                # All default controllers: resourcequota, namespace, serviceaccount(-token),
                # node-lifecycle, garbage-collector among them.
                "--controllers=*",
                f"--service-account-private-key-file={pki.sa_key}",
                f"--root-ca-file={pki.ca_cert}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--profiling=false",
            ],
        )

    def _start_scheduler(self) -> None:
        config = self.workdir / "kube-scheduler.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kubescheduler.config.k8s.io/v1",
                    "kind": "KubeSchedulerConfiguration",
                    "clientConnection": {"kubeconfig": str(self.kubeconfig)},
                    "leaderElection": {"leaderElect": False},
                }
            )
        )
        self._component(
            "kube-scheduler",
            [
                str(self.bin_dir / "kube-scheduler"),
                f"--config={config}",
                "--bind-address=127.0.0.1",
                "--secure-port=0",
            ],
        )

    def _start_kwok(self) -> None:
        stages = self.workdir / "kwok-stages.yaml"
        stages.write_text(KWOK_STAGES)
        self._component(
            "kwok",
            [
                str(self.bin_dir / "kwok"),
                f"--kubeconfig={self.kubeconfig}",
                f"--config={stages}",
                f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}=fake",
                "--node-ip=127.0.0.1",
                "--cidr=10.244.0.1/16",
                "--node-lease-duration-seconds=40",
            ],
        )

    # --- nodes ----------------------------------------------------------------------------------

    def node_name(self, kind: str) -> str:
        """A node name unique to this control plane: gpu-<kind>-<plane id>-<n>."""
        return f"gpu-{kind}-{self._id}-{next(self._node_names)}"

    def add_kwok_gpu_nodes(self, count: int, spec: GpuNodeSpec | None = None) -> list[str]:
        """Creates `count` GPU nodes that kwok keeps Ready; pods bound there become Running."""
        spec = spec or GpuNodeSpec()
        names = [self.node_name("kwok") for _ in range(count)]
        for name in names:
            self.api.create(
                "/api/v1/nodes", gpu_node_manifest(name, spec, {KWOK_ANNOTATION: "fake"})
            )
        for name in names:
            wait_for(f"kwok node {name} Ready", functools.partial(self.node_ready, name))
        return names

    def node_ready(self, name: str) -> bool:
        """Ready, and node-lifecycle has lifted the not-ready taint, so pods can be scheduled."""
        self._alive()
        node = self.api.get(f"/api/v1/nodes/{name}")
        conditions = node.get("status", {}).get("conditions", [])
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
        taints = node.get("spec", {}).get("taints") or []
        return ready and not any(t["key"].startswith("node.kubernetes.io/") for t in taints)

    def start_process_kubelet(self, spec: GpuNodeSpec | None = None) -> ProcessKubelet:
        """Starts a node whose pods really run, as local processes (see process_kubelet.py)."""
        spec = spec or L4
        name = self.node_name("proc")
        root = self.workdir / "kubelets" / name
        root.mkdir(parents=True)
        manifest = root / "node.json"
        manifest.write_text(
            json.dumps(gpu_node_manifest(name, spec, {PROCESS_KUBELET_ANNOTATION: name}))
        )
        pod_cidr, lock = claim_pod_cidr()
        component = self._component(
            f"process-kubelet-{name}",
            [
                sys.executable,
                str(PROCESS_KUBELET),
                f"--kubeconfig={self.kubeconfig}",
                f"--node-manifest={manifest}",
                f"--pod-cidr={pod_cidr}",
                f"--root-dir={root}",
            ],
        )
        component.on_stop.append(lock.close)
        kubelet = ProcessKubelet(name, pod_cidr, root, component)
        wait_for(f"process kubelet node {name} Ready", lambda: self.node_ready(name))
        return kubelet

    def stop_process_kubelet(self, kubelet: ProcessKubelet) -> None:
        """Stops the kubelet (its pods' processes with it) and removes its Node."""
        kubelet.component.stop()
        self.components.pop(kubelet.component.name, None)
        self.api.delete(f"/api/v1/nodes/{kubelet.node}")


@dataclass(frozen=True)
class ProcessKubelet:
    """A running process kubelet: its node, its pods' addresses, its directory and process."""

    node: str
    pod_cidr: str
    root: Path
    component: Component

    def pod_log(self, namespace: str, pod: str) -> Path:
        """The file the pod's process writes its stdout and stderr to."""
        return self.root / "pods" / f"{namespace}_{pod}.log"
