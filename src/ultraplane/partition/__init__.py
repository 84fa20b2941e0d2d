"""Partitioned keyspaces: a map of key prefixes to store processes, a supervisor that runs one
store per partition, and a router that forwards each etcd request to the partition owning its keys."""
