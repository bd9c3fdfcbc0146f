"""JupyterHub spawners: GPUKubeSpawner (Kubernetes) and GPULocalSpawner (one machine)."""
