"""The notebook side of gpuhub: a Jupyter server extension that samples the server's own GPUs
through NVML (pynvml) and reports them, and the JupyterLab warning before a cull."""
