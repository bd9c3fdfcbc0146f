"""Fixtures that start one real Kubernetes control plane per test session (see testbed.py).

The binaries come from scripts/build-k8s, which builds them on first use (minutes) and then
answers from its cache. A failing test gets the last lines of every component's log appended.
"""

from __future__ import annotations

import secrets
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from hub import K8sHub

# pytest puts this directory (it has no __init__.py) on sys.path, so testbed imports as itself.
from testbed import (
    A100,
    H100,
    L4,
    ApiError,
    ControlPlane,
    ProcessKubelet,
    build_binaries,
    wait_for,
)


@pytest.fixture(scope="session")
def k8s_bin_dir() -> Path:
    return build_binaries()


@pytest.fixture(scope="session")
def control_plane(k8s_bin_dir: Path) -> Iterator[ControlPlane]:
    with ControlPlane(k8s_bin_dir) as plane:
        yield plane


@pytest.fixture(scope="session")
def h100_nodes(control_plane: ControlPlane) -> list[str]:
    """Two kwok nodes with 8 H100 GPUs (and 7 MIG 1g.10gb slices) each."""
    return control_plane.add_kwok_gpu_nodes(2, H100)


@pytest.fixture(scope="session")
def a100_nodes(control_plane: ControlPlane) -> list[str]:
    """One kwok node with 4 A100 GPUs, so that product selection has something to avoid."""
    return control_plane.add_kwok_gpu_nodes(1, A100)


@pytest.fixture(scope="session")
def process_kubelet(control_plane: ControlPlane) -> ProcessKubelet:
    """A node with four L4 GPUs whose pods run as local processes."""
    return control_plane.start_process_kubelet(L4)


@pytest.fixture
def namespace(control_plane: ControlPlane) -> Iterator[str]:
    """A fresh namespace with its default ServiceAccount (pods need it); deleted afterwards."""
    name = f"test-{secrets.token_hex(3)}"
    control_plane.api.create(
        "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    )
    wait_for(
        f"the default ServiceAccount in {name}",
        lambda: control_plane.api.get(f"/api/v1/namespaces/{name}/serviceaccounts/default"),
    )
    yield name
    try:
        control_plane.api.delete(f"/api/v1/namespaces/{name}")
    except ApiError as error:
        if error.status != 404:
            raise


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    funcargs = getattr(item, "funcargs", {})
    plane = funcargs.get("control_plane")
    if report.failed and isinstance(plane, ControlPlane):
        report.sections.append(("Kubernetes control plane logs", plane.logs_report()))
    for value in funcargs.values():
        if report.failed and isinstance(value, K8sHub):
            report.sections.append(("JupyterHub log", value.log(120)))
    return report
