"""The signature admission check, as a Kubernetes ValidatingWebhook speaks it (AdmissionReview v1).

A policy names repository globs whose images need a valid registry signature (cosign or Notation form).
`review` takes an AdmissionReview request carrying a Pod (or a workload with a pod template) and answers an
AdmissionReview response: allowed, or refused with status 403 and a message naming each offending image.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ultraplane.registry.errors import RegistryError
from ultraplane.registry.names import check_name

Verifier = Callable[[str, str], dict[str, Any]]  # (repository, tag or digest) -> Platform.verify's result
_DIGEST_SUFFIX = re.compile(r"@([A-Za-z0-9_+.-]+:[A-Fa-f0-9]+)$")


@dataclass(frozen=True)
class ImageReference:
    host: str | None
    repository: str
    reference: str  # a tag or a digest

    @classmethod
    def parse(cls, image: str) -> ImageReference:
        """HOST[:PORT]/NAME[:TAG][@DIGEST], as the container runtimes read it (no host: docker.io)."""
        rest = image.strip()
        digest = None
        match = _DIGEST_SUFFIX.search(rest)
        if match is not None:
            digest, rest = match.group(1), rest[:match.start()]
        first, slash, remainder = rest.partition("/")
        host = None
        if slash and ("." in first or ":" in first or first == "localhost"):
            host, rest = first, remainder
        tag = "latest"
        name, colon, maybe_tag = rest.rpartition(":")
        if colon and "/" not in maybe_tag:
            rest, tag = name, maybe_tag
        return cls(host, check_name(rest), digest or tag)


@dataclass
class AdmissionPolicy:
    require_signature: list[str]  # repository globs

    def requires(self, repository: str) -> bool:
        return any(fnmatch.fnmatchcase(repository, pattern) for pattern in self.require_signature)


def check_image(image: str, policy: AdmissionPolicy, verify: Verifier) -> str | None:
    """None if `image` may run; otherwise why not."""
    try:
        parsed = ImageReference.parse(image)
    except RegistryError:
        return f"image {image!r}: not a valid image reference"
    if not policy.requires(parsed.repository):
        return None
    result = verify(parsed.repository, parsed.reference)
    if result.get("verified"):
        return None
    if result.get("digest") is None:
        return f"image {image!r}: repository {parsed.repository} requires a signed image, and {parsed.reference} " \
               f"was not found in the registry"
    problems = result["cosign"]["problems"] + result["notation"]["problems"]
    return f"image {image!r} ({result['digest']}): repository {parsed.repository} requires a valid signature: " \
           + "; ".join(dict.fromkeys(problems))


def pod_images(document: Any) -> list[str]:
    """Container images of a Pod, or of a workload's pod template (Deployment, Job, CronJob, ...)."""
    if not isinstance(document, dict):
        return []
    spec = document.get("spec") or {}
    for _ in range(3):  # CronJob: spec.jobTemplate.spec.template.spec
        if "containers" in spec or not isinstance(spec, dict):
            break
        inner = spec.get("template") or (spec.get("jobTemplate") or {}).get("spec", {}).get("template") or {}
        spec = inner.get("spec") or {}
    images = []
    if isinstance(spec, dict):
        for key in ("initContainers", "containers", "ephemeralContainers"):
            for container in spec.get(key) or []:
                if isinstance(container, dict) and isinstance(container.get("image"), str):
                    images.append(container["image"])
    return images


def review(document: Any, policy: AdmissionPolicy, verify: Verifier) -> dict[str, Any]:
    """AdmissionReview v1 in, AdmissionReview v1 out."""
    request = document.get("request") if isinstance(document, dict) else None
    if not isinstance(request, dict) or not isinstance(request.get("uid"), str):
        return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                "response": {"uid": "", "allowed": False,
                             "status": {"code": 400, "message": "not an AdmissionReview v1 with request.uid"}}}
    refusals = [reason for image in pod_images(request.get("object"))
                if (reason := check_image(image, policy, verify)) is not None]
    response: dict[str, Any] = {"uid": request["uid"], "allowed": not refusals}
    if refusals:
        response["status"] = {"code": 403, "reason": "Forbidden", "message": "; ".join(refusals)}
    return {"apiVersion": document.get("apiVersion", "admission.k8s.io/v1"), "kind": "AdmissionReview",
            "response": response}
