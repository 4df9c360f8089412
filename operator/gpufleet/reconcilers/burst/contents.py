"""How many Secrets and ConfigMaps a namespace gpufleet created in a remote cluster holds,
without listing them. Pure: reconcilers/burst/namespaces.py makes the calls.

In RBAC, `list secrets` returns the Secrets' data whatever the request's Accept header asks
for (a metadata-only list is a courtesy of the server, not a limit of the grant), and the grant
is cluster-wide because the namespaces are not known in advance: a remote identity that may
list Secrets may read every Secret of the remote cluster. ConfigMaps alike. So gpufleet lists
neither. When it creates a namespace it also creates in it the ResourceQuota
`gpufleet-contents`, whose `hard` counts them with ceilings nobody reaches; the API server's
quota controller and admission keep its `status.used`, which a `get resourcequotas` reads
and which reveals no data. Only that status is trusted: writing it takes a grant on
`resourcequotas/status` that only the cluster's admins hold.

Doubt keeps the namespace or looks again, never deletes it: no quota (made by an earlier
release, or its creation failed; namespaces.py creates it and looks again next tick), a status
that has not counted yet, a `hard` that no longer counts a kind, or a count it cannot read.
The baseline is what the cluster puts in every namespace: the ConfigMap `kube-root-ca.crt`,
and no Secret (service-account token Secrets are not made since Kubernetes 1.24; on an older
cluster the namespaces are kept).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

from gpufleet.api.labels import CREATED_BY_LABEL, INSTALLATION_LABEL, PROVIDER_LABEL

QUOTA_NAME = "gpufleet-contents"
# (kind, quota resource name, how many of them every namespace holds).
COUNTED = (
    ("ConfigMap", "count/configmaps", 1),  # kube-root-ca.crt
    ("Secret", "count/secrets", 0),
)
# Far above what one namespace holds, so that the quota counts and never refuses.
_CEILING = "1000000"


class Tally(enum.Enum):
    """What a namespace's quota says it holds of the COUNTED kinds."""

    BASELINE = "Baseline"  # no more than every namespace holds
    HOLDS = "Holds"  # more, or counts that cannot be read: keep the namespace
    UNCOUNTED = "Uncounted"  # no quota, or its status has not counted yet: look again


def quota_manifest(namespace: str, installation: str = "", provider: str = "") -> dict[str, Any]:
    """The ResourceQuota that counts `namespace`'s Secrets and ConfigMaps for gpufleet."""
    labels = {CREATED_BY_LABEL: "gpufleet"}
    if installation:
        labels[INSTALLATION_LABEL] = installation
    if provider:
        labels[PROVIDER_LABEL] = provider
    return {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": QUOTA_NAME, "namespace": namespace, "labels": labels},
        "spec": {"hard": {resource: _CEILING for _, resource, _ in COUNTED}},
    }


def tally(quota: Mapping[str, Any] | None) -> tuple[Tally, str]:
    """What the ResourceQuota `quota` (None: there is none) says a namespace holds of the
    COUNTED kinds, and why."""
    if quota is None:
        return Tally.UNCOUNTED, f"no quota {QUOTA_NAME} counts its Secrets and ConfigMaps yet"
    hard = (quota.get("spec") or {}).get("hard") or {}
    status = quota.get("status") or {}
    used = status.get("used") or {}
    counted = status.get("hard") or {}
    held: list[str] = []
    for kind, resource, baseline in COUNTED:
        if resource not in hard:
            return Tally.HOLDS, f"its quota {QUOTA_NAME} no longer counts {resource}"
        if resource not in used or resource not in counted:
            return Tally.UNCOUNTED, f"its quota {QUOTA_NAME} has not counted {resource} yet"
        text = str(used[resource])
        if not (text.isascii() and text.isdigit()):  # "1k": a quantity past any baseline
            held.append(f"{kind} count {text}")
        elif (more := int(text) - baseline) > 0:
            held.append(f"{more} {kind}{'s' if more > 1 else ''}")
    if held:
        return (
            Tally.HOLDS,
            f"holds {', '.join(held)} besides the cluster's own (its quota {QUOTA_NAME})",
        )
    return Tally.BASELINE, "no Secret or ConfigMap beyond the cluster's own"
