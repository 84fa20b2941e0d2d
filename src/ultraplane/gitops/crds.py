"""Argo CD's CustomResourceDefinitions, shipped as data (see each file's header for its source) and installed
with server-side apply when the controller starts."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import yaml

from ultraplane.client.http import ApiError, KubeClient

CRD_DIR = Path(__file__).with_name("crds")
CRD_NAMES = ("application", "appproject", "applicationset")
CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
FIELD_MANAGER = "argocd-controller"


def load_crds() -> list[dict[str, Any]]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return [yaml.load((CRD_DIR / f"{name}-crd.yaml").read_text(), Loader=loader) for name in CRD_NAMES]


async def install_crds(client: KubeClient, timeout: float = 60.0) -> None:
    """Apply the CRDs and wait until each is Established (its API is served)."""
    crds = await asyncio.to_thread(load_crds)
    for crd in crds:
        await client.apply(f"{CRD_PATH}/{crd['metadata']['name']}", crd, FIELD_MANAGER, force=True)
    deadline = asyncio.get_running_loop().time() + timeout
    for crd in crds:
        while True:
            try:
                live = await client.get(f"{CRD_PATH}/{crd['metadata']['name']}")
                conditions = (live.get("status") or {}).get("conditions") or []
                if any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions):
                    break
            except ApiError:
                pass
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"CRD {crd['metadata']['name']} not established")
            await asyncio.sleep(0.2)
