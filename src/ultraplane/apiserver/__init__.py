"""The Kubernetes API server: storage interface, generic registry, HTTP server and built-in resources."""
