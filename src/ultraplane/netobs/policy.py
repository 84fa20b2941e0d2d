"""NetworkPolicy proposals from observed flows, and an evaluator of Kubernetes NetworkPolicy semantics
to replay flows against policies.

Proposal: for each destination workload that received forwarded flows, one networking.k8s.io/v1
NetworkPolicy in its namespace selecting the workload's pods (its spec.selector; a bare pod's labels)
with policyTypes [Ingress] and one rule per observed source: the source workload's selector in its
namespace (kubernetes.io/metadata.name), or an ipBlock /32 for a source outside the cluster, with
exactly the destination ports seen (after Service translation, which is what policies see).

Evaluator (networking.k8s.io/v1 semantics): a pod is isolated for a direction when some policy
selecting it lists that direction in policyTypes (default [Ingress], plus Egress when egress rules are
present); an isolated pod admits a connection only if some rule of such a policy matches its peer (a
rule without peers matches every peer; podSelector alone means the policy's namespace; namespaceSelector
alone means all pods of those namespaces; both means those pods in those namespaces; ipBlock matches the
IP minus `except`) and its port (no ports: all; a named port resolves against the destination pod's
container ports; endPort makes a range). A connection needs both the sender's egress and the receiver's
ingress to admit it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ultraplane.netobs.cluster import ClusterSnapshot
from ultraplane.netobs.flow import FORWARDED, Endpoint, Flow

Obj = dict[str, Any]
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
MANAGED_BY = "app.kubernetes.io/managed-by"


@dataclass(slots=True)
class Peer:
    namespace: str
    labels: dict[str, str]
    ip: str
    is_pod: bool
    container_ports: dict[str, tuple[int, str]] = field(default_factory=dict)


def selector_matches(selector: Obj | None, labels: dict[str, str]) -> bool:
    """metav1.LabelSelector: matchLabels and matchExpressions all hold; an empty selector matches all."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def _policy_types(policy: Obj) -> list[str]:
    spec = policy.get("spec", {})
    if spec.get("policyTypes"):
        return list(spec["policyTypes"])
    return ["Ingress", "Egress"] if spec.get("egress") else ["Ingress"]


def _peer_matches(peer: Obj, policy_namespace: str, other: Peer, namespace_labels: dict[str, dict[str, str]]) -> bool:
    if "ipBlock" in peer:
        block = peer["ipBlock"]
        if not other.ip:
            return False
        address = ipaddress.ip_address(other.ip)
        if address not in ipaddress.ip_network(block["cidr"], strict=False):
            return False
        return not any(address in ipaddress.ip_network(ex, strict=False) for ex in block.get("except") or [])
    if not other.is_pod:
        return False
    pod_selector, ns_selector = peer.get("podSelector"), peer.get("namespaceSelector")
    if ns_selector is None:
        if other.namespace != policy_namespace:
            return False
    elif not selector_matches(ns_selector, namespace_labels.get(other.namespace, {})):
        return False
    return pod_selector is None or selector_matches(pod_selector, other.labels)


def _port_matches(ports: list[Obj] | None, protocol: str, port: int, destination: Peer) -> bool:
    if not ports:
        return True
    for rule in ports:
        if rule.get("protocol", "TCP") != protocol:
            continue
        wanted = rule.get("port")
        if wanted is None:
            return True
        if isinstance(wanted, str):
            named = destination.container_ports.get(wanted)
            if named and named[0] == port and named[1] == protocol:
                return True
            continue
        end = rule.get("endPort") or wanted
        if wanted <= port <= end:
            return True
    return False


def _admits(policies: list[Obj], direction: str, subject: Peer, other: Peer, protocol: str, port: int,
            destination: Peer, namespace_labels: dict[str, dict[str, str]]) -> bool:
    if not subject.is_pod:
        return True  # policies govern pods only
    isolating = [p for p in policies if p["metadata"]["namespace"] == subject.namespace
                 and direction in _policy_types(p) and selector_matches(p.get("spec", {}).get("podSelector", {}),
                                                                        subject.labels)]
    if not isolating:
        return True
    rules_key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    for policy in isolating:
        for rule in policy.get("spec", {}).get(rules_key) or []:
            peers = rule.get(peers_key) or []
            if peers and not any(_peer_matches(peer, policy["metadata"]["namespace"], other, namespace_labels)
                                 for peer in peers):
                continue
            if _port_matches(rule.get("ports"), protocol, port, destination):
                return True
    return False


class PolicyEvaluator:
    def __init__(self, policies: list[Obj], snap: ClusterSnapshot) -> None:
        self.policies = policies
        self.snap = snap

    def peer(self, endpoint: Endpoint) -> Peer:
        pod = self.snap.pod(endpoint.namespace, endpoint.pod_name) if endpoint.pod_name else None
        if pod is None and endpoint.ip:
            pod = self.snap.pods_by_ip.get(endpoint.ip)
        if pod is not None:
            return Peer(pod.namespace, pod.labels, pod.ip, True, pod.container_ports)
        if endpoint.pod_name:
            return Peer(endpoint.namespace, dict(endpoint.labels), endpoint.ip, True)
        return Peer("", {}, endpoint.ip, False)

    def allows(self, flow: Flow) -> bool:
        src, dst = self.peer(flow.source), self.peer(flow.destination)
        labels = self.snap.namespace_labels
        return (_admits(self.policies, "Egress", src, dst, flow.protocol, flow.destination_port, dst, labels)
                and _admits(self.policies, "Ingress", dst, src, flow.protocol, flow.destination_port, dst, labels))


def _selector_for(endpoint: Endpoint, snap: ClusterSnapshot) -> Obj:
    selector = snap.workload_selectors.get(endpoint.workload_id)
    if selector:
        return selector
    pod = snap.pod(endpoint.namespace, endpoint.pod_name)
    return {"matchLabels": dict(pod.labels if pod else endpoint.labels)}


def propose_policies(flows: Iterable[Flow], snap: ClusterSnapshot) -> list[Obj]:
    """One ingress NetworkPolicy per destination workload admitting exactly the forwarded flows seen."""
    # destination workload id -> (selector, namespace, name, {source key -> (peer, {(proto, port)})})
    targets: dict[str, tuple[Obj, str, str, dict[str, tuple[Obj, set[tuple[str, int]]]]]] = {}
    for flow in flows:
        if flow.verdict != FORWARDED or flow.timed_out or flow.is_reply:
            continue
        dst, src = flow.destination, flow.source
        if not dst.pod_name or (snap.pod(dst.namespace, dst.pod_name) is None and not dst.labels):
            continue  # not a pod of this cluster: nothing to protect
        if flow.protocol not in ("TCP", "UDP", "SCTP"):
            continue
        wid = dst.workload_id
        if wid not in targets:
            name = (dst.workload_name or dst.pod_name).lower()
            targets[wid] = (_selector_for(dst, snap), dst.namespace, name, {})
        sources = targets[wid][3]
        if src.pod_name:
            key = src.workload_id
            peer: Obj = {"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: src.namespace}},
                         "podSelector": _selector_for(src, snap)}
        elif src.ip:
            key = f"ip:{src.ip}"
            bits = 128 if ":" in src.ip else 32
            peer = {"ipBlock": {"cidr": f"{src.ip}/{bits}"}}
        else:
            continue
        sources.setdefault(key, (peer, set()))[1].add((flow.protocol, flow.destination_port))
    policies = []
    for _wid, (selector, namespace, name, sources) in sorted(targets.items()):
        rules = [{"from": [peer], "ports": [{"protocol": proto, "port": port} for proto, port in sorted(ports)]}
                 for _key, (peer, ports) in sorted(sources.items())]
        policies.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                         "metadata": {"name": f"netobs-allow-{name}"[:63].rstrip("-"), "namespace": namespace,
                                      "labels": {MANAGED_BY: "ultraplane-netobs"}},
                         "spec": {"podSelector": selector, "policyTypes": ["Ingress"], "ingress": rules}})
    return policies
