"""`ultraplane registry audit-verify` and `ultraplane registry verify-image`: offline checks on a data dir."""

from __future__ import annotations

import argparse
import json
import sys


def run_tool(args: argparse.Namespace) -> int:
    if args.tool == "audit-verify":
        return audit_verify(args)
    return verify_image(args)


def audit_verify(args: argparse.Namespace) -> int:
    from ultraplane.registry.audit import verify_log

    result = verify_log(args.data_dir / "audit")
    for problem in result.problems:
        print(f"TAMPERED: {problem}")
    if result.ok:
        print(f"audit log intact: {result.records} records")
        return 0
    return 1


def verify_image(args: argparse.Namespace) -> int:
    from ultraplane.registry.admission import AdmissionPolicy, check_image
    from ultraplane.registry.platform import Platform, PlatformConfig
    from ultraplane.registry.storage import Storage

    if not args.image:
        print("error: verify-image wants an IMAGE", file=sys.stderr)
        return 2
    platform = Platform(args.data_dir, Storage(args.data_dir / "storage"), PlatformConfig(lifecycle_interval=0))
    try:
        # Every repository requires a signature here: the question asked is "is this image signed?"
        refusal = check_image(args.image, AdmissionPolicy(["*"]), platform.verify)
    finally:
        platform.audit.close()
    if refusal is None:
        print(f"{args.image}: signature verified")
        return 0
    print(json.dumps({"image": args.image, "refused": refusal}) if args.log_level == "debug" else refusal)
    return 1
