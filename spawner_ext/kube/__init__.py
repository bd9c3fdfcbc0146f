"""Kubernetes side: pure pod placement builders and the GPUKubeSpawner."""
