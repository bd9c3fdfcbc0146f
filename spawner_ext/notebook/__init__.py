"""The notebook side of gpuhub: a Jupyter server extension that samples the server's own GPUs
through NVML (pynvml) and reports them, and the JupyterLab warning before a cull."""

from pathlib import Path

NOTEBOOK_CONFIG = Path(__file__).parent / "etc"
"""A Jupyter config directory enabling the extension (for JUPYTER_CONFIG_PATH)."""
NOTEBOOK_DATA = Path(__file__).parent / "jupyter"
"""A Jupyter data directory holding the built JupyterLab extension (for JUPYTER_PATH)."""
