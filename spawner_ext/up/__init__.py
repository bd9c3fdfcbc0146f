"""`gpuhub up`: the whole platform on one machine with one command. It validates the catalog, then
runs JupyterHub with GPULocalSpawner, a shared password (or each user's own, passwords.py), SQLite
and configurable-http-proxy, all kept in one state directory, and stops them on Ctrl-C or SIGTERM.

config.py and banner.py are pure; command.py and supervisor.py touch files, ports and processes.
"""

from .banner import suggested_users
from .command import add_up_command, find_program, free_port
from .config import (
    CONFIG_FILE_TEXT,
    UpSettings,
    configure,
    drop_shared_admin,
    example_catalog,
    hub_config,
)

__all__ = [
    "CONFIG_FILE_TEXT",
    "UpSettings",
    "add_up_command",
    "configure",
    "drop_shared_admin",
    "example_catalog",
    "find_program",
    "free_port",
    "hub_config",
    "suggested_users",
]
