"""Which NetworkPolicies select a pod, and what they allow it (pure; ``flannelctl netpol``).

:func:`explain` takes the :class:`~flanneld.netpol.model.Cluster` and a pod's
``namespace/name`` and returns the text ``flannelctl netpol explain`` prints:
per direction, whether the pod is isolated and by which policies (with their
rule count), or why policy does not apply to it (hostNetwork, no IP,
finished).
"""

from __future__ import annotations

from flanneld.netpol.model import Cluster, Direction, applying


def explain(cluster: Cluster, key: str) -> str:
    pod = next((p for p in cluster.pods if p.key == key), None)
    if pod is None:
        return f"{key}: no such pod"
    if not pod.actionable:
        why = ("hostNetwork (never selected)" if pod.host_network
               else "no pod IP yet" if not pod.ips else f"phase {pod.phase}")
        return f"{key}: not subject to NetworkPolicy: {why}"
    lines = [f"{key} ({', '.join(str(ip) for ip in pod.ips)}, node {pod.node_name or '?'})"]
    for direction in Direction:
        policies = applying(cluster, pod, direction)
        if not policies:
            lines.append(f"  {direction.value}: not isolated (everything allowed)")
            continue
        lines.append(f"  {direction.value}: isolated by {len(policies)} "
                     f"polic{'y' if len(policies) == 1 else 'ies'}")
        for policy in sorted(policies, key=lambda p: p.key):
            rules = len(policy.rules(direction))
            allows = f"{rules} rule{'' if rules == 1 else 's'}" if rules else "allows nothing"
            lines.append(f"    {policy.key}: {allows}")
    return "\n".join(lines)
