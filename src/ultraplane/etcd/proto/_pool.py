"""The descriptor pool the generated etcd API modules register into, and their class builder.

The pool is private rather than protobuf's default pool because client libraries (etcd3, aetcd)
register their own copies of the same etcd message names (etcdserverpb.*, mvccpb.*, authpb.*) in
the default pool, and protobuf refuses a second definition of a name there. With our own pool the
server and those clients can share one process (as the tests do).

``build_messages`` stands in for protobuf's ``builder.BuildTopDescriptorsAndMessages``: that one
also records every class in the default symbol database, which, under the pure-Python protobuf
implementation, re-checks the names against the default pool and fails on exactly that clash.
scripts/gen_proto.sh rewrites the generated modules to call these.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pool, message, reflection
from google.protobuf.descriptor import Descriptor, FileDescriptor
from google.protobuf.internal import enum_type_wrapper

POOL = descriptor_pool.DescriptorPool()


def _message_class(module_name: str, desc: Descriptor, qualname_prefix: str) -> type[message.Message]:
    namespace: dict[str, Any] = {
        name: _message_class(module_name, nested, qualname_prefix + desc.name + ".")
        for name, nested in desc.nested_types_by_name.items()
    }
    namespace["DESCRIPTOR"] = desc
    namespace["__module__"] = module_name
    namespace["__qualname__"] = qualname_prefix + desc.name
    return reflection.GeneratedProtocolMessageType(desc.name, (message.Message,), namespace)


def build_messages(file_desc: FileDescriptor, module_name: str, module: dict[str, Any]) -> None:
    """Fill a generated module's globals with its enums, service descriptors and message classes."""
    for name, enum_desc in file_desc.enum_types_by_name.items():
        module["_" + name.upper()] = enum_desc
        module[name] = enum_type_wrapper.EnumTypeWrapper(enum_desc)
        for value in enum_desc.values:
            module[value.name] = value.number
    for name, service in file_desc.services_by_name.items():
        module["_" + name.upper()] = service
    for name, msg_desc in file_desc.message_types_by_name.items():
        module[name] = _message_class(module_name, msg_desc, "")
