"""Image scanning: SBOMs from layers, OSV advisories, version ranges per ecosystem, findings per image
digest, rescans when advisories change, and a live inventory of which digests run where.

Works on plain inputs (an OCI image layout directory, the registry's blob directory, layer tarballs, OSV
files) so it does not depend on the registry server's internals.
"""

from ultraplane.registry.scan.errors import ScanError

__all__ = ["ScanError"]
