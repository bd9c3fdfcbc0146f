"""JupyterHub configuration of `gpuhub up` (local mode): GPULocalSpawner, a shared password (or
a password per user), SQLite and configurable-http-proxy, every setting read from GPUHUB_*
environment variables.

`gpuhub up` writes this file into its state directory and runs `jupyterhub -f` on it. To run
JupyterHub yourself with it instead, e.g.:
    GPUHUB_PASSWORD=choose-one GPUHUB_SIMULATE_GPUS=2xh100-80gb jupyterhub -f jupyterhub_config.py
The variables are listed in docs/reference/cli.md. GPUHUB_JUPYTERHUB_CONFIG names a further
config file, loaded last so that its settings win.
"""

import os

from spawner_ext.up import configure, drop_shared_admin

c = get_config()  # noqa: F821
configure(c, os.environ)
if os.environ.get("GPUHUB_JUPYTERHUB_CONFIG"):
    load_subconfig(os.environ["GPUHUB_JUPYTERHUB_CONFIG"])  # noqa: F821
    drop_shared_admin(c)
