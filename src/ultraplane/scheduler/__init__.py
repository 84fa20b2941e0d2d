"""The scheduler: binds pending pods to nodes through the API server, as kube-scheduler does."""
