"""`ultraplane registry`: an OCI Distribution Spec v1.1 registry (TLS and token auth by default)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from ultraplane.cli.up import run_loop


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "registry",
        help="run the OCI container registry",
        description="Serve the OCI Distribution Spec v1.1 (and Docker v2 schema 2) from content-addressed "
                    "storage under DATA_DIR, over TLS with certificates from DATA_DIR/pki and Docker's "
                    "bearer-token auth (the first start creates user admin and prints its password).",
    )
    parser.add_argument("tool", nargs="?", default="serve", choices=["serve", "audit-verify", "verify-image"],
                        help="serve (default); audit-verify: check the audit log's hash chain; verify-image "
                             "IMAGE: check IMAGE's registry signatures (both offline, on DATA_DIR)")
    parser.add_argument("image", nargs="?", help="with verify-image: HOST/NAME[:TAG][@DIGEST] or NAME:TAG")
    parser.add_argument("--data-dir", required=True, type=Path, help="storage, users, keys and certificates")
    parser.add_argument("--sign-on-push", action="append", default=[], metavar="GLOB",
                        help="sign images pushed to matching repositories with the registry's key (repeatable)")
    parser.add_argument("--require-signature", action="append", default=[], metavar="GLOB",
                        help="the admission check refuses unsigned images of matching repositories (repeatable)")
    parser.add_argument("--lifecycle-interval", type=float, default=3600.0,
                        help="seconds between lifecycle policy evaluations (0: only on request)")
    parser.add_argument("--public-host", default=None,
                        help="HOST[:PORT] that signatures name as the image's registry (default: request Host)")
    parser.add_argument("--listen", default="127.0.0.1:5000", help="HOST:PORT to serve on (port 0: any free)")
    parser.add_argument("--scan", action="store_true",
                        help="attach an SPDX SBOM referrer to every pushed image (in the background)")
    parser.add_argument("--advisories", default=None, metavar="DIR|ZIP",
                        help="with --scan: OSV advisories; findings at GET /ultraplane/v1/findings/NAME@DIGEST")
    parser.add_argument("--pki-dir", type=Path, default=None,
                        help="CA and serving certificate directory (default DATA_DIR/pki; `up` passes its own)")
    parser.add_argument("--insecure-http", action="store_true", help="serve plain HTTP instead of TLS")
    parser.add_argument("--no-auth", action="store_true", help="let anyone pull, push and delete (no tokens)")
    parser.add_argument("--anonymous-pull", action="append", default=[], metavar="GLOB",
                        help="repositories anyone may pull without credentials (repeatable, e.g. 'public/*')")
    parser.add_argument("--token-realm", default=None,
                        help="realm URL announced in WWW-Authenticate (default: this server's /token)")
    parser.add_argument("--gc-interval", type=float, default=3600.0,
                        help="seconds between garbage collections of unreferenced blobs (0: never)")
    parser.add_argument("--gc-grace", type=float, default=3600.0,
                        help="blobs pushed or linked more recently than this many seconds are never collected")
    parser.add_argument("--max-uploads", type=int, default=10_000,
                        help="open upload sessions beyond which new ones get 429 TOOMANYREQUESTS")
    parser.add_argument("--max-blob-size", type=int, default=0, metavar="BYTES",
                        help="refuse blobs larger than this with 413 SIZE_INVALID (0: no limit)")
    parser.add_argument("--fsync", action="store_true", help="fsync every blob before renaming it into place")
    parser.add_argument("--set-user", metavar="NAME",
                        help="create or update user NAME (password from stdin) with --access rules, then exit")
    parser.add_argument("--access", action="append", default=[], metavar="GLOB=ACTIONS",
                        help="with --set-user: e.g. 'team/*=pull,push' (actions pull, push, delete, *)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warn", "error", "panic", "fatal"])
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ultraplane.registry.auth import UserStore
    from ultraplane.registry.platform import PlatformConfig
    from ultraplane.registry.server import RegistryConfig

    if args.tool != "serve":
        from ultraplane.cli.registrytools import run_tool

        return run_tool(args)
    if args.set_user:
        password = sys.stdin.readline().rstrip("\n")
        if not password:
            print("error: give the password on stdin", file=sys.stderr)
            return 2
        try:
            UserStore(args.data_dir / "auth" / "users.json").set_user(args.set_user, password, args.access)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"user {args.set_user} saved")
        return 0
    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        print(f"error: --listen wants HOST:PORT, got {args.listen!r}", file=sys.stderr)
        return 2
    config = RegistryConfig(args.data_dir, host.strip("[]"), int(port), tls=not args.insecure_http,
                            auth=not args.no_auth, anonymous_pull=args.anonymous_pull, realm=args.token_realm,
                            gc_interval=args.gc_interval, gc_grace=args.gc_grace, fsync=args.fsync,
                            max_uploads=args.max_uploads, max_blob_size=args.max_blob_size,
                            platform=PlatformConfig(args.sign_on_push, args.require_signature,
                                                    args.lifecycle_interval, args.public_host),
                            pki_dir=args.pki_dir, scan=args.scan or bool(args.advisories),
                            advisories=args.advisories)
    return run_loop(serve(config))


async def serve(config: object) -> int:
    from ultraplane.registry.server import Registry, RegistryConfig

    assert isinstance(config, RegistryConfig)
    registry = Registry(config)
    await registry.start()
    files = registry.files
    print(f"registry listening on {registry.url}", flush=True)
    if files.ca_cert is not None:
        print(f"CA certificate: {files.ca_cert}", flush=True)
    if files.admin_password is not None:
        print(f"created user admin with password {files.admin_password} "
              f"(also in {config.data_dir / 'auth' / 'admin.password'})", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await registry.close()
    return 0
