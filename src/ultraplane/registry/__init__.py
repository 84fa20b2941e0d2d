"""An OCI Distribution Spec v1.1 registry: content-addressed storage, token auth, an httptools HTTP server.

Layers, lowest first: `errors` and `names` (pure), `storage` (filesystem), `manifests` (parsing),
`auth` (users and JWTs), `http` (the asyncio HTTP/1.1 server), `api` (the routes), `server` (wiring).
"""
