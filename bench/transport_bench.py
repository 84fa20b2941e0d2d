"""Raw gRPC transport throughput: serve_h2 vs serve_grpcio with a no-op etcd KV handler.

Each transport serves /etcdserverpb.KV/{Put,Range} from a child process whose handler
returns a pre-encoded response at once, so the numbers measure transport cost only.
The load comes from etcdload (etcd's Go client; /usr/local/bin/etcdload) and/or
grpcio's Python client. Prints one JSON line per run.

    .venv/bin/python bench/transport_bench.py [--transports h2,grpcio] [--total 40000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _response_bytes() -> bytes:
    """A PutResponse/RangeResponse with only a ResponseHeader (field 1): what etcd returns for a Put."""
    header = b"".join(
        _varint(field << 3) + _varint(value)
        for field, value in ((1, 14841639068965178418), (2, 10276657743932975437), (3, 42), (4, 2))
    )
    return b"\x0a" + _varint(len(header)) + header


async def _serve(transport: str, port_file: str) -> None:
    from google.protobuf import empty_pb2

    from ultraplane.etcd.rpc import CallContext, Method

    reply = _response_bytes()

    async def noop(request: object, ctx: CallContext) -> bytes:
        return reply

    # Empty parses any request (all fields become unknown fields): the real etcd messages are not needed.
    methods = {
        path: Method(path, empty_pb2.Empty, "unary", noop)
        for path in ("/etcdserverpb.KV/Put", "/etcdserverpb.KV/Range")
    }
    if transport == "h2":
        from ultraplane.etcd.h2server import serve_h2

        server = await serve_h2(methods, "127.0.0.1", 0)
    else:
        from ultraplane.etcd.grpcio_server import serve_grpcio

        server = await serve_grpcio(methods, "127.0.0.1", 0)
    Path(port_file).write_text(str(server.port))
    await asyncio.Event().wait()


def _start_server(transport: str) -> tuple[subprocess.Popen[bytes], int]:
    port_file = f"/tmp/transport_bench_{os.getpid()}_{transport}.port"
    Path(port_file).unlink(missing_ok=True)
    child = subprocess.Popen([sys.executable, __file__, "--serve", transport, "--port-file", port_file])
    deadline = time.monotonic() + 30
    while not Path(port_file).exists() or not Path(port_file).read_text():
        if time.monotonic() > deadline or child.poll() is not None:
            child.kill()
            raise RuntimeError(f"{transport} server did not start")
        time.sleep(0.05)
    port = int(Path(port_file).read_text())
    Path(port_file).unlink()
    return child, port


def _etcdload(port: int, args: argparse.Namespace) -> dict[str, object]:
    command = [
        args.etcdload,
        f"-endpoint=127.0.0.1:{port}",
        f"-op={args.op}",
        f"-total={args.total}",
        f"-clients={args.clients}",
        f"-conns={args.conns}",
        "-keys=1000",
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600, check=True)
    return json.loads(run.stdout.strip().splitlines()[-1])


def _grpcio_client(port: int, args: argparse.Namespace) -> dict[str, object]:
    """grpcio's asyncio client: many concurrent unary calls on a few channels."""
    import grpc

    async def drive() -> float:
        channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for _ in range(args.conns)]
        calls = [
            channel.unary_unary("/etcdserverpb.KV/Put", request_serializer=bytes, response_deserializer=bytes)
            for channel in channels
        ]
        per_worker = args.total // args.clients
        request = b"\x0a\x05hello\x12\x05world"

        async def worker(index: int) -> None:
            call = calls[index % len(calls)]
            for _ in range(per_worker):
                await call(request)

        await calls[0](request)
        start = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(args.clients)))
        elapsed = time.perf_counter() - start
        for channel in channels:
            await channel.close()
        return elapsed

    elapsed = asyncio.run(drive())
    done = args.total // args.clients * args.clients
    return {"requests": done, "seconds": round(elapsed, 3), "rps": round(done / elapsed, 1)}


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time the server process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--transports", default="h2,grpcio")
    parser.add_argument("--clients-kind", default="etcdload", help="etcdload, grpcio or both")
    parser.add_argument("--op", default="put")
    parser.add_argument("--total", type=int, default=40000)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--conns", type=int, default=10)
    parser.add_argument("--etcdload", default=shutil.which("etcdload") or "/usr/local/bin/etcdload")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--port-file", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.serve:
        if args.serve == "h2":
            import uvloop

            uvloop.run(_serve(args.serve, args.port_file))
        else:
            asyncio.run(_serve(args.serve, args.port_file))
        return

    kinds = ["etcdload", "grpcio"] if args.clients_kind == "both" else [args.clients_kind]
    for transport in args.transports.split(","):
        child, port = _start_server(transport)
        try:
            for kind in kinds:
                cpu_before = _cpu_seconds(child.pid)
                result = _etcdload(port, args) if kind == "etcdload" else _grpcio_client(port, args)
                server_cpu = _cpu_seconds(child.pid) - cpu_before
                requests = int(result.get("requests") or 0) or 1
                result["server_cpu_us_per_req"] = round(server_cpu / requests * 1e6, 1)
                print(json.dumps({"transport": transport, "client": kind, **result}), flush=True)
        finally:
            child.terminate()
            child.wait(10)


if __name__ == "__main__":
    main()
