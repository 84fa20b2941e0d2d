"""OutOfSync detection: the fields a manifest sets, compared with the live object after normalization.

Only what git declares is compared (defaults and fields other managers own never cause drift), as Argo's
server-side diff does. Scalars compare by their string form, because the API server may return an
int-or-string field or a quantity in the other form ("80" for 80)."""

from __future__ import annotations

import base64
from typing import Any

Obj = dict[str, Any]
IGNORED_METADATA = ("creationTimestamp", "resourceVersion", "uid", "generation", "managedFields",
                    "namespace", "selfLink")


def normalize(manifest: Obj) -> Obj:
    out = {k: v for k, v in manifest.items() if k != "status"}
    meta = {k: v for k, v in (manifest.get("metadata") or {}).items() if k not in IGNORED_METADATA}
    out["metadata"] = meta
    if manifest.get("kind") == "Secret" and manifest.get("stringData"):
        # the API server folds stringData into base64 data
        data = dict(out.get("data") or {})
        for key, value in out.pop("stringData").items():
            data[key] = base64.b64encode(str(value).encode()).decode()
        out["data"] = data
    return out


def _differences(want: Any, live: Any, path: str, out: list[Obj]) -> None:
    if isinstance(want, dict):
        if not isinstance(live, dict):
            out.append({"path": path or "/", "desired": want, "live": live})
            return
        for key, value in want.items():
            _differences(value, live.get(key), f"{path}.{key}" if path else key, out)
    elif isinstance(want, list):
        if not isinstance(live, list) or len(live) != len(want):
            out.append({"path": path, "desired": want, "live": live})
            return
        for i, (w, v) in enumerate(zip(want, live, strict=True)):
            _differences(w, v, f"{path}[{i}]", out)
    elif want is None:
        return  # "field: null" in a manifest means unset
    elif live is None or (want != live and str(want).lower() != str(live).lower()):
        out.append({"path": path, "desired": want, "live": live})


def diff(manifest: Obj, live: Obj | None) -> list[Obj]:
    """[{path, desired, live}] for every declared field whose live value differs; [] when in sync."""
    if live is None:
        return [{"path": "/", "desired": "present", "live": None}]
    out: list[Obj] = []
    _differences(normalize(manifest), live, "", out)
    return out
