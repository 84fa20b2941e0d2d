"""A small asyncio Kubernetes client for ultraplane's own components (scheduler, controllers, nodes).

Components act only through the API server, as real ones do: `http.KubeClient` speaks HTTP/1.1 with
keep-alive over TLS to any kube-apiserver, `informer.Informer` is client-go's list-then-watch cache.
"""
