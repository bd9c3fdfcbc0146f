"""gpuhub: a multi-tenant GPU notebook platform built on JupyterHub."""

__version__ = "0.1.0"
