"""HTML of the fleet dashboard: plain server-rendered pages, no template engine, everything escaped."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from html import escape
from typing import Any

from ultraplane.fleet import calendar

Obj = dict[str, Any]
_BADGE = {"ERROR": "bad", "WARNING": "warn", "PASSING": "ok", "UNKNOWN": "dim", "True": "ok", "False": "bad",
          "Supported": "ok", "Ending soon": "warn", "End of life": "bad", "Unknown": "dim", "Running": "ok",
          "Succeeded": "dim", "Pending": "warn", "Failed": "bad", "Completed": "ok"}


def e(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def badge(text: str) -> str:
    return f'<span class="badge {_BADGE.get(text, "dim")}">{e(text)}</span>'


def page(title: str, body: str, user: str = "", csrf: str = "") -> str:
    nav = ""
    if user:
        nav = (f'<nav><a href="/">Clusters</a><a href="/insights">Insights</a><a href="/calendar">Calendar</a>'
               f'<a href="/evacuations">Evacuations</a><span class="user">{e(user)}</span>'
               f'<form method="post" action="/logout"><input type="hidden" name="csrf" value="{e(csrf)}">'
               f'<button>Log out</button></form></nav>')
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{e(title)} · ultraplane fleet'
            f'</title><link rel="stylesheet" href="/static/dashboard.css"><script src="/static/dashboard.js" defer>'
            f'</script></head><body><header><h1>ultraplane fleet</h1>{nav}</header><main><h2>{e(title)}</h2>'
            f'{body}</main></body></html>')


def table(headers: Iterable[str], rows: Iterable[Iterable[str]], table_id: str = "") -> str:
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    ident = f' id="{e(table_id)}"' if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def login(error: str = "") -> str:
    message = f'<p class="error">{e(error)}</p>' if error else ""
    return page("Log in", f"""{message}
<form method="post" action="/login" class="login">
  <label>Bearer token<textarea name="token" rows="3" placeholder="a service-account or static token"></textarea></label>
  <p>or</p>
  <label>Kubeconfig of the fleet (client certificate or token)<textarea name="kubeconfig" rows="8"></textarea></label>
  <button type="submit">Log in</button>
</form>""")


def overview(clusters: list[Obj], insights: dict[str, Obj], insights_visible: bool, today: dt.date,
             user: str, csrf: str) -> str:
    by_group: dict[tuple[str, str], list[Obj]] = {}
    for cluster in clusters:
        labels = cluster["metadata"].get("labels") or {}
        key = (labels.get("fleet.ultraplane.io/account", "-"), (cluster.get("spec") or {}).get("region", "-"))
        by_group.setdefault(key, []).append(cluster)
    rows = []
    for (account, region), group in sorted(by_group.items()):
        for cluster in sorted(group, key=lambda c: c["metadata"]["name"]):
            name = cluster["metadata"]["name"]
            status = cluster.get("status") or {}
            version = status.get("kubernetesVersion", "")
            ready = next((c.get("status") for c in status.get("conditions") or [] if c.get("type") == "Ready"),
                         "Unknown")
            nodes = status.get("nodeSummary") or {}
            pods = ((status.get("resourceSummary") or {}).get("allocated") or {}).get("pods", "0")
            readiness = (insights.get(name) or {}).get("status") or {}
            upgrade = badge(readiness.get("status", "UNKNOWN")) + (
                f' <small>to {e(readiness.get("targetVersion"))}</small>' if readiness.get("targetVersion") else "") \
                if insights_visible else '<span class="dim">not permitted</span>'
            rows.append([e(account), e(region), f'<a href="/clusters/{e(name)}">{e(name)}</a>', badge(ready),
                         e(version), badge(calendar.support_status(version, today) if version else "Unknown"),
                         upgrade, f'{e(nodes.get("readyNum", 0))}/{e(nodes.get("totalNum", 0))}', e(pods)])
    body = table(["Account", "Region", "Cluster", "Ready", "Version", "Support", "Upgrade readiness", "Nodes ready",
                  "Pods"], rows, "clusters")
    return page("Clusters", f"<p>{len(clusters)} cluster(s) in {len({k[1] for k in by_group})} region(s)</p>{body}",
                user, csrf)


def pods_table(pods: list[Obj]) -> str:
    rows = []
    for pod in sorted(pods, key=lambda p: (p["metadata"].get("namespace", ""), p["metadata"]["name"])):
        status = pod.get("status") or {}
        statuses = status.get("containerStatuses") or []
        ready = sum(1 for s in statuses if s.get("ready"))
        restarts = sum(s.get("restartCount", 0) for s in statuses)
        rows.append([e(pod["metadata"].get("namespace")), e(pod["metadata"]["name"]),
                     badge(status.get("phase", "Pending")), f"{ready}/{len((pod.get('spec') or {}).get('containers') or [])}",
                     e(restarts), e((pod.get("spec") or {}).get("nodeName", ""))])
    return table(["Namespace", "Pod", "Phase", "Ready", "Restarts", "Node"], rows, "pods")


def cluster_page(name: str, namespaces: list[Obj], deployments: list[Obj], pods: list[Obj], user: str,
                 csrf: str) -> str:
    ns_rows = [[e(n["metadata"]["name"]), e((n.get("status") or {}).get("phase", ""))]
               for n in sorted(namespaces, key=lambda n: n["metadata"]["name"])]
    deploy_rows = []
    for d in sorted(deployments, key=lambda d: (d["metadata"].get("namespace", ""), d["metadata"]["name"])):
        status = d.get("status") or {}
        deploy_rows.append([e(d["metadata"].get("namespace")), e(d["metadata"]["name"]),
                            f'{e(status.get("readyReplicas", 0))}/{e((d.get("spec") or {}).get("replicas", 1))}',
                            e(status.get("updatedReplicas", 0)), e(status.get("availableReplicas", 0))])
    body = (f'<section><h3>Namespaces</h3>{table(["Namespace", "Phase"], ns_rows, "namespaces")}</section>'
            f'<section><h3>Workloads</h3>{table(["Namespace", "Deployment", "Ready", "Up-to-date", "Available"], deploy_rows, "deployments")}</section>'
            f'<section><h3>Pods <small class="live" data-live="/clusters/{e(name)}/pods/stream" '
            f'data-target="pods-live">live</small></h3><div id="pods-live">{pods_table(pods)}</div></section>')
    return page(f"Cluster {name}", body, user, csrf)


def insights_page(insights: list[Obj], user: str, csrf: str) -> str:
    sections = []
    for item in sorted(insights, key=lambda i: i["metadata"]["name"]):
        name = item["metadata"]["name"]
        status = item.get("status") or {}
        rows = []
        for hop in status.get("hops") or []:
            for insight in hop.get("insights") or []:
                rows.append([e(hop.get("version")), e(insight.get("name")), badge(insight.get("status", "UNKNOWN")),
                             e(insight.get("reason"))])
        refresh = (f'<form method="post" action="/insights/{e(name)}/refresh" class="inline">'
                   f'<input type="hidden" name="csrf" value="{e(csrf)}"><button>Refresh now</button></form>')
        sections.append(
            f'<section class="insight" id="insight-{e(name)}"><h3>{e(name)} {badge(status.get("status", "UNKNOWN"))}'
            f' <small>{e(status.get("currentVersion", "?"))} → {e(status.get("targetVersion", "?"))}, last scan '
            f'{e(status.get("lastScanTime", "never"))}</small> {refresh}</h3>'
            f'{table(["Hop", "Insight", "Status", "Reason"], rows)}</section>')
    return page("Upgrade insights", "".join(sections) or "<p>No insights yet: the first scan runs after a "
                                                          "cluster joins.</p>", user, csrf)


def calendar_page(clusters: list[Obj], today: dt.date, user: str, csrf: str) -> str:
    running: dict[str, list[str]] = {}
    for cluster in clusters:
        version = (cluster.get("status") or {}).get("kubernetesVersion", "")
        found = calendar.release(version) if version else None
        if found:
            running.setdefault(found.version, []).append(cluster["metadata"]["name"])
    rows = [[e(r.version), e(r.released.isoformat()), e(r.end_of_life.isoformat()),
             badge(calendar.support_status(r.version, today)), e(", ".join(sorted(running.get(r.version, []))))]
            for r in reversed(calendar.releases())]
    return page("Upgrade calendar", table(["Version", "Released", "End of support", "Status", "Clusters"], rows,
                                          "calendar"), user, csrf)


def evacuations_fragment(evacuations: list[Obj]) -> str:
    rows = []
    for evacuation in sorted(evacuations, key=lambda x: x["metadata"]["name"]):
        status = evacuation.get("status") or {}
        total, moved = status.get("totalReplicas", 0), status.get("movedReplicas", 0)
        percent = int(100 * moved / total) if total else (100 if status.get("phase") == "Completed" else 0)
        rows.append([e(evacuation["spec"].get("region")), badge(status.get("phase", "Pending")),
                     f'<progress max="100" value="{percent}"></progress> {e(moved)}/{e(total)}',
                     e(", ".join(status.get("clusters") or []))])
    return table(["Region", "Phase", "Moved", "Clusters"], rows, "evacuations")


def evacuations_page(evacuations: list[Obj], user: str, csrf: str) -> str:
    body = (f'<p><small class="live" data-live="/evacuations/stream" data-target="evacuations-live">live</small></p>'
            f'<div id="evacuations-live">{evacuations_fragment(evacuations)}</div>')
    return page("Evacuations", body, user, csrf)


def error_page(title: str, message: str, user: str = "", csrf: str = "") -> str:
    return page(title, f'<p class="error">{e(message)}</p>', user, csrf)
