"""The wheel carries what an environment that installs it needs for culling: the prebuilt
JupyterLab extension where every JupyterLab looks (`share/jupyter/labextensions/`), the server
extension enabled (`etc/jupyter/jupyter_server_config.d/`), and Chart.js for the usage page.
Built from the checkout without build isolation (the front-end assets are there already, built
by `scripts/bootstrap` or the editable install, so hatch-jupyter-builder skips npm)."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).parents[1]
LAB = "share/jupyter/labextensions/@gpuhub/culling-warning"


def test_the_wheel_installs_the_lab_and_server_extensions(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("gpuhub-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        data = next(n.split("/data/")[0] for n in names if "/data/" in n) + "/data/"
        lab = json.loads(archive.read(f"{data}{LAB}/package.json"))
        server = json.loads(archive.read(f"{data}etc/jupyter/jupyter_server_config.d/gpuhub.json"))
    assert lab["name"] == "@gpuhub/culling-warning"
    assert lab["jupyterlab"]["_build"]["load"].startswith("static/remoteEntry.")
    assert f"{data}{LAB}/{lab['jupyterlab']['_build']['load']}" in names
    assert server["ServerApp"]["jpserver_extensions"] == {"spawner_ext.notebook.extension": True}
    assert "spawner_ext/service/static/vendor/chart.umd.min.js" in names
    assert "spawner_ext/fakenvml/fake_nvml.c" in names
    assert any(n.startswith("spawner_ext/ledger/migrations/versions/") for n in names)
