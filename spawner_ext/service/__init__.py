"""The gpuhub service: hub-wide work in one JupyterHub-managed process (see app.py)."""
