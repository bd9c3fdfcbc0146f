"""A real single-machine install runs each user's server under that user's own unprivileged
unix account (`c.GPULocalSpawner.server_user = "system"`), GPUs still pinned."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Hub, environ_of, needs_local_hub

ROOT = Path(__file__).parents[2]
USER = "gsys"
# The test venv's Python lives under /root, which other accounts cannot enter; Debian's python3
# serves instead (JupyterHub only needs an HTTP server at the server's URL to call it up).
SYSTEM_MODE = """
c.GPULocalSpawner.server_user = "system"
c.GPULocalSpawner.cmd = [
    "/bin/sh", "-c",
    'port=${JUPYTERHUB_SERVICE_URL##*:}; port=${port%%/*}; '
    'exec /usr/bin/python3 -m http.server --bind 127.0.0.1 "$port"',
    "sh",
]
"""


@pytest.fixture(scope="module")
def unix_user() -> Iterator[pwd.struct_passwd]:
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("needs root and useradd to create a unix account")
    if not Path("/usr/bin/python3").exists():
        pytest.skip("needs Debian's /usr/bin/python3")
    subprocess.run(["userdel", "-r", USER], capture_output=True, check=False)
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", USER], check=True)
    try:
        yield pwd.getpwnam(USER)
    finally:
        subprocess.run(["pkill", "-u", USER], capture_output=True, check=False)
        subprocess.run(["userdel", "-r", USER], capture_output=True, check=False)


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, unix_user: pwd.struct_passwd) -> Iterator[Hub]:
    needs_local_hub()
    workdir = tmp_path_factory.mktemp("system-users")
    catalog = workdir / "catalog.yaml"
    text = (ROOT / "hub_config" / "catalog.yaml").read_text()
    catalog.write_text(text.replace("users: [ada, lin]", f"users: [ada, lin, {USER}]", 1))
    hub = Hub(workdir, "1xl4", "--config", str(catalog))
    hub.extra_config.write_text(hub.extra_config.read_text() + SYSTEM_MODE)
    try:
        hub.start()
        yield hub
    finally:
        hub.cleanup()


def owner_uid(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    return int(line.split()[1])


@pytest.mark.integration
def test_servers_run_as_the_users_own_account(hub: Hub, unix_user: pwd.struct_passwd) -> None:
    model = hub.start_server(USER, {"profile": "l4-single"})
    pid = int(model["state"]["pid"])
    assert owner_uid(pid) == unix_user.pw_uid
    env = environ_of(pid)
    assert env["HOME"] == unix_user.pw_dir
    assert env["USER"] == USER
    assert env["GPUHUB_GPU_TYPE"] == "l4"
    assert env["GPUHUB_SIMULATED_DEVICES"] == model["state"]["gpuhub_devices"][0]
    hub.stop_server(USER)
