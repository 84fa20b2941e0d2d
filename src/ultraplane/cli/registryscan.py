"""`ultraplane registry-scan`: SBOMs, vulnerability findings and where vulnerable images run.

sbom IMAGE_LAYOUT_DIR [--format spdx|cyclonedx]          SBOM document of an OCI image layout, on stdout
scan IMAGE_LAYOUT_DIR --advisories DIR_OR_ZIP [--store D]  findings as JSON (the SBOM kept in D for rescans)
where --cve ID --kubeconfig [NAME=]FILE ... --store D --advisories DIR_OR_ZIP
                                                         which clusters/pods/containers run an image with ID
where --digest D --kubeconfig [NAME=]FILE ...             what runs that digest
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from ultraplane.client.http import KubeClient
from ultraplane.client.kubeconfig import KubeconfigError
from ultraplane.registry.scan import advisories as osv
from ultraplane.registry.scan.errors import ScanError
from ultraplane.registry.scan.export import to_cyclonedx, to_spdx
from ultraplane.registry.scan.inventory import InventoryIndex, InventoryWatcher
from ultraplane.registry.scan.layout import open_layout
from ultraplane.registry.scan.sbom import build_sbom
from ultraplane.registry.scan.store import SbomStore, Scanner


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "registry-scan",
        help="SBOMs, vulnerability findings and where images run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="scan_command", metavar="SUBCOMMAND", required=True)

    sbom = commands.add_parser("sbom", help="SBOM of an OCI image layout directory")
    sbom.add_argument("layout", type=Path, metavar="IMAGE_LAYOUT_DIR")
    sbom.add_argument("--ref", help="the index entry with this org.opencontainers.image.ref.name")
    sbom.add_argument("--format", choices=["spdx", "cyclonedx"], default="spdx")
    sbom.add_argument("--cyclonedx-version", choices=["1.5", "1.6"], default="1.6")
    sbom.set_defaults(run=run_sbom)

    scan = commands.add_parser("scan", help="match an image's packages against OSV advisories")
    scan.add_argument("layout", type=Path, metavar="IMAGE_LAYOUT_DIR")
    scan.add_argument("--ref")
    scan.add_argument("--advisories", required=True, type=Path, metavar="DIR_OR_ZIP")
    scan.add_argument(
        "--store", type=Path, help="directory keeping SBOMs per digest (for rescans and `where`)"
    )
    scan.set_defaults(run=run_scan)

    where = commands.add_parser("where", help="where an image with a CVE (or a digest) runs, from pod status")
    target = where.add_mutually_exclusive_group(required=True)
    target.add_argument("--cve", help="CVE id (or advisory id)")
    target.add_argument("--digest", help="image digest (sha256:...)")
    where.add_argument(
        "--kubeconfig",
        action="append",
        required=True,
        metavar="[NAME=]FILE",
        help="a cluster to look in (repeatable); NAME defaults to the file's current context",
    )
    where.add_argument("--store", type=Path, help="SBOM store written by `scan --store` (needed with --cve)")
    where.add_argument("--advisories", type=Path, metavar="DIR_OR_ZIP", help="needed with --cve")
    where.set_defaults(run=run_where)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


def run_sbom(args: argparse.Namespace) -> int:
    try:
        sbom = build_sbom(open_layout(args.layout, args.ref))
    except ScanError as exc:
        return _fail(str(exc))
    document = to_spdx(sbom) if args.format == "spdx" else to_cyclonedx(sbom, args.cyclonedx_version)
    json.dump(document, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def _finding_json(finding: Any) -> dict[str, Any]:
    data = dataclasses.asdict(finding)
    data["aliases"] = list(finding.aliases)
    return data


def run_scan(args: argparse.Namespace) -> int:
    try:
        scanner = Scanner(SbomStore(args.store) if args.store else None, osv.load(args.advisories))
        image = open_layout(args.layout, args.ref)
        findings = scanner.scan(image)
    except ScanError as exc:
        return _fail(str(exc))
    json.dump(
        {"image": image.name, "digest": image.digest, "findings": [_finding_json(f) for f in findings]},
        sys.stdout,
        indent=2,
    )
    sys.stdout.write("\n")
    return 0


def _cluster_specs(values: list[str]) -> list[tuple[str | None, str]]:
    specs: list[tuple[str | None, str]] = []
    for value in values:
        name, sep, path = value.partition("=")
        specs.append((name, path) if sep and not Path(value).exists() else (None, value))
    return specs


async def _where(args: argparse.Namespace, scanner: Scanner | None) -> dict[str, Any]:
    import yaml

    clients: dict[str, KubeClient] = {}
    try:
        for name, path in _cluster_specs(args.kubeconfig):
            if name is None:
                name = (yaml.safe_load(Path(path).read_text()) or {}).get("current-context") or path
            clients[name] = await KubeClient.from_kubeconfig(path)
        index = InventoryIndex()
        watcher = InventoryWatcher(index, clients)
        await watcher.start()
        try:
            await asyncio.wait_for(watcher.wait_synced(), 60)
        finally:
            await watcher.stop()
    finally:
        for client in clients.values():
            await client.close()
    if args.digest:
        return {"digest": args.digest, "runs": [p._asdict() for p in index.runs(args.digest)]}
    assert scanner is not None
    images = []
    for digest, (findings, placements) in sorted(index.where(args.cve, scanner).items()):
        images.append(
            {
                "digest": digest,
                "findings": [_finding_json(f) for f in findings],
                "runs": [p._asdict() for p in placements],
            }
        )
    return {"cve": args.cve, "images": images}


def run_where(args: argparse.Namespace) -> int:
    scanner = None
    if args.cve:
        if args.store is None or args.advisories is None:
            return _fail("--cve needs --store (SBOMs from `scan --store`) and --advisories")
        try:
            scanner = Scanner(SbomStore(args.store), osv.load(args.advisories))
        except ScanError as exc:
            return _fail(str(exc))
    try:
        result = asyncio.run(_where(args, scanner))
    except (TimeoutError, OSError, KubeconfigError) as exc:
        return _fail(f"cannot read pods: {exc}")
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0
