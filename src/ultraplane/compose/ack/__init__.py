"""ACK-style controllers for local resources: manifests in, real PostgreSQL databases and roles and NATS
JetStream streams out. Each kind follows AWS Controllers for Kubernetes' conventions (spec = the service's
API fields, status.ackResourceMetadata, ACK.* conditions, adoption and the deletion-policy annotation)."""
