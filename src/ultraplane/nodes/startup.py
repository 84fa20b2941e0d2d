"""What a simulated container does: how long its image takes to pull, how long it runs, what it prints.

Pull model: an image of S MB downloads at `download_mbps` and unpacks at `unpack_mbps`. A stock
runtime downloads every layer and then unpacks (S/d + S/u); with parallel pull and unpack, as SOCI's
parallel mode does, unpacking overlaps the download (max(S/d, S/u)), which halves the time when the
two rates are equal. Images already on the node (IfNotPresent) are not pulled again.
An image whose registry host is under the reserved `.invalid` top-level domain (RFC 2606: it never
resolves), e.g. `registry.invalid/app:1`, cannot be pulled: the pod stays Pending in ErrImagePull and
ImagePullBackOff, as a real kubelet's does for a registry name that does not resolve.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from ultraplane.nodes.shell import interpret

RUN_SECONDS_ANNOTATION = "ultraplane.io/run-seconds"
EXIT_CODE_ANNOTATION = "ultraplane.io/exit-code"
PARALLEL_UNPACK_ANNOTATION = "ultraplane.io/parallel-unpack"
DEFAULT_IMAGE_MB = 200.0
LOG_INTERVAL = 5.0  # seconds between the simulated periodic log lines

# Compressed sizes (MB, linux/amd64) of well-known images; the repository decides, tags are ignored.
IMAGE_SIZES_MB: dict[str, float] = {
    "registry.k8s.io/pause": 0.3, "busybox": 2.2, "alpine": 3.6, "debian": 49, "ubuntu": 29.7,
    "nginx": 68, "httpd": 58, "redis": 45, "memcached": 30, "postgres": 150, "mysql": 170, "mongo": 270,
    "python": 390, "node": 400, "golang": 280, "openjdk": 330, "eclipse-temurin": 180,
    "perl": 330, "registry.k8s.io/e2e-test-images/agnhost": 50,
    "pytorch/pytorch": 3400, "tensorflow/tensorflow": 2100, "nvcr.io/nvidia/pytorch": 9700,
    "nvcr.io/nvidia/tritonserver": 7500, "nvcr.io/nvidia/cuda": 1800, "vllm/vllm-openai": 8900,
}
_LIBRARY = re.compile(r"^(docker\.io/)?(library/)?")


def image_repository(image: str) -> str:
    """`docker.io/library/nginx:1.27@sha256:...` → `nginx`."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)
    if ":" in last[-1]:
        name = name[: name.rfind(":")]
    return _LIBRARY.sub("", name)


def pull_error(image: str) -> str | None:
    """containerd's error for an image whose registry does not resolve (a `.invalid` host), else None."""
    name = image.split("@", 1)[0]
    host, _, rest = name.partition("/")
    if not rest or not host.split(":", 1)[0].endswith(".invalid"):
        return None
    path = rest
    tag = "latest"
    if ":" in path.rsplit("/", 1)[-1]:
        path, tag = path.rsplit(":", 1)
    return (f'failed to pull and unpack image "{image}": failed to resolve reference "{image}": failed to do '
            f'request: Head "https://{host}/v2/{path}/manifests/{tag}": dial tcp: lookup {host.split(":", 1)[0]}: '
            f"no such host")


def image_size_mb(image: str) -> float:
    return IMAGE_SIZES_MB.get(image_repository(image), DEFAULT_IMAGE_MB)


def image_id(image: str) -> str:
    """A stable content digest for the image reference (what the runtime reports as imageID)."""
    digest = hashlib.sha256(image_repository(image).encode()).hexdigest()
    repo = image.split("@", 1)[0]
    if ":" in repo.rsplit("/", 1)[-1]:
        repo = repo[: repo.rfind(":")]
    if "/" not in repo or "." not in repo.split("/", 1)[0]:
        repo = "docker.io/library/" + repo if "/" not in repo else "docker.io/" + repo
    return f"{repo}@sha256:{digest}"


@dataclass
class PullModel:
    download_mbps: float = 200.0
    unpack_mbps: float = 200.0
    parallel_unpack: bool = True  # SOCI's parallel pull and unpack
    sandbox_seconds: float = 0.2  # pod sandbox and network setup

    def pull_seconds(self, image: str, parallel: bool | None = None, size_mb: float | None = None) -> float:
        """`size_mb`: the image's real size when a registry told it (else the well-known or default size)."""
        size = image_size_mb(image) if size_mb is None else size_mb
        download, unpack = size / self.download_mbps, size / self.unpack_mbps
        return max(download, unpack) if (self.parallel_unpack if parallel is None else parallel) \
            else download + unpack


def parallel_override(pod: dict[str, Any]) -> bool | None:
    value = ((pod.get("metadata") or {}).get("annotations") or {}).get(PARALLEL_UNPACK_ANNOTATION)
    return None if value is None else value.lower() == "true"


@dataclass
class RunPlan:
    """How a container behaves once started: forever (seconds None), or exiting after `seconds` with
    `exit_code`; `files` are what its command creates and removes on the way (for exec probes)."""
    seconds: float | None
    exit_code: int = 0
    output: list[str] | None = None  # lines printed at start (echo)
    files: list[tuple[float, str, bool]] = field(default_factory=list)


BATCH_STEP_SECONDS = 1.0  # a batch command with nothing to tell its length
_SLEEP = re.compile(r"(?:^|[;&|\s])sleep\s+(\d+(?:\.\d+)?)")
_EXIT = re.compile(r"(?:^|[;&|\s])exit\s+(\d+)")


def command_text(container: dict[str, Any]) -> str:
    return " ".join(str(x) for x in (container.get("command") or []) + (container.get("args") or []))


def argv_of(container: dict[str, Any]) -> list[str]:
    return [str(x) for x in (container.get("command") or []) + (container.get("args") or [])]


def job_like(pod: dict[str, Any]) -> bool:
    """restartPolicy Never/OnFailure (or a Job's pod): its programs are batch steps that end."""
    return (pod.get("spec") or {}).get("restartPolicy") in ("Never", "OnFailure") or any(
        ref.get("kind") == "Job" for ref in (pod.get("metadata") or {}).get("ownerReferences") or [])


def serves(container: dict[str, Any]) -> bool:
    """A network probe (tcpSocket, httpGet, grpc) on any of the container's probes."""
    return any(kind in (container.get(probe) or {}) for probe in ("startupProbe", "readinessProbe", "livenessProbe")
               for kind in ("tcpSocket", "httpGet", "grpc"))


def run_plan(pod: dict[str, Any], container: dict[str, Any]) -> RunPlan:
    """What the container's command does, read by the shell interpreter (shell.py).

    No command (the image's entrypoint) or a program the interpreter does not know: a service that
    runs until stopped, or in a job-like pod a step that succeeds after a second. A script that
    ends (`exit 3`, `sleep 5`, `false`) ends in any pod, and restartPolicy decides what follows.
    """
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    # a container probed on a port is a server even in a restartPolicy: Never pod (the official client's
    # port-forward e2e test runs `python port-server.py 1234` so, with a tcpSocket startupProbe)
    finite = job_like(pod) and not serves(container)
    argv = argv_of(container)
    plan = RunPlan(BATCH_STEP_SECONDS if finite else None, 0, [])
    if argv:
        done = interpret(argv, batch=finite)
        plan.output, plan.files = done.output, done.files
        if done.unreadable:  # if/for/case: fall back to the first sleep and exit in the text
            text = command_text(container)
            sleep, exit_match = _SLEEP.search(text), _EXIT.search(text)
            plan.exit_code = int(exit_match.group(1)) if exit_match else 0
            if finite and sleep:
                plan.seconds = float(sleep.group(1))
        else:
            plan.seconds = None if done.seconds is None else max(done.seconds, 0.0) or BATCH_STEP_SECONDS
            plan.exit_code = done.status
    if EXIT_CODE_ANNOTATION in annotations:
        try:
            plan.exit_code = int(annotations[EXIT_CODE_ANNOTATION])
        except ValueError:
            pass
    if RUN_SECONDS_ANNOTATION in annotations:
        try:
            plan.seconds = float(annotations[RUN_SECONDS_ANNOTATION])
        except ValueError:
            pass
    return plan


def log_lines(pod: dict[str, Any], container: dict[str, Any], started: dt.datetime, until: dt.datetime,
              plan: RunPlan) -> list[tuple[dt.datetime, str]]:
    """The container's output from start to `until`: its echo lines, then a line every LOG_INTERVAL."""
    lines: list[tuple[dt.datetime, str]] = []
    name = container.get("name", "")
    if plan.output:
        lines.extend((started, text) for text in plan.output)
    else:
        lines.append((started, f"{name}: started {container.get('image', '')} on "
                               f"{(pod.get('spec') or {}).get('nodeName', '')}"))
        elapsed = (until - started).total_seconds()
        if plan.seconds is not None:
            elapsed = min(elapsed, plan.seconds)
        for tick in range(1, int(elapsed / LOG_INTERVAL) + 1):
            lines.append((started + dt.timedelta(seconds=tick * LOG_INTERVAL), f"{name}: heartbeat {tick}"))
    return lines
