"""The in-memory MVCC store: etcd's data model, journaled for durability."""

from ultraplane.store.mvcc import StateMachine, Store
from ultraplane.store.watch import Watcher

__all__ = ["StateMachine", "Store", "Watcher"]
