"""Simulated nodes: many kubelets in one process, acting only through the API server."""
