#!/usr/bin/env python3
"""Turn gpufleet InferencePools into ServingPools (v1alpha1 rename, see CHANGELOG.md).

Reads `kubectl get inferencepools.gpufleet.io -A -o json` on stdin and writes a List of
ServingPools with the same namespace, name, labels, annotations and spec, for
`kubectl apply --server-side -f -`. Only the standard library, so it runs wherever kubectl does.
Status is left behind: the operator rebuilds it on its first tick.
"""

from __future__ import annotations

import json
import sys
from typing import Any

OLD_KIND = "InferencePool"
NEW_KIND = "ServingPool"
API_VERSION = "gpufleet.io/v1alpha1"
# Server-set fields and kubectl's record of the old object would make the apply fail or lie.
_KEPT_METADATA = ("name", "namespace", "labels", "annotations")
_DROPPED_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration",)


def convert(listing: dict[str, Any]) -> dict[str, Any]:
    items = []
    for item in listing.get("items", []):
        if item.get("kind", OLD_KIND) != OLD_KIND or not str(
            item.get("apiVersion", API_VERSION)
        ).startswith("gpufleet.io/"):
            raise SystemExit(
                f"not a gpufleet.io {OLD_KIND}: {item.get('apiVersion')} {item.get('kind')}"
            )
        meta = {k: item["metadata"][k] for k in _KEPT_METADATA if k in item["metadata"]}
        annotations = {
            k: v for k, v in meta.get("annotations", {}).items() if k not in _DROPPED_ANNOTATIONS
        }
        if annotations:
            meta["annotations"] = annotations
        else:
            meta.pop("annotations", None)
        items.append(
            {"apiVersion": API_VERSION, "kind": NEW_KIND, "metadata": meta, "spec": item["spec"]}
        )
    return {"apiVersion": "v1", "kind": "List", "items": items}


if __name__ == "__main__":
    json.dump(convert(json.load(sys.stdin)), sys.stdout, indent=2)
    sys.stdout.write("\n")
