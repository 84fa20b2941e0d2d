"""Network observability: flow records (Hubble's field names), a flow generator driven by workload
annotations, ingestion of Hubble JSON and AWS VPC flow logs, a service map, Retina-named Prometheus
metrics, cross-AZ cost tables and NetworkPolicy proposals checked by replaying the flows."""
