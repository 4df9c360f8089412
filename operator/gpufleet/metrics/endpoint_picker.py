"""The queue of a Gateway API Inference Extension InferencePool, from its endpoint picker.

The endpoint picker (EPP) exports per pool, labelled only with the pool's `name`
(GIE pkg/epp/metrics/metrics.go, v1.0 to v1.5; the EPP left the module at v1.6, for
llm-d-router):

- `inference_pool_average_queue_size`: the model servers' waiting requests summed over the
  pods whose metrics are fresh, divided by how many they are;
- `inference_pool_ready_pods`: how many they are.

Both are set together from the same pods (refreshPrometheusMetrics in pkg/epp/datalayer and
pkg/epp/backend/metrics), so their product is the pool's total queue. Up to v1.4 the average
is an integer division, which loses less than one request per pod; v1.5 divides in floats.
From v1.3, with no fresh pod, ready pods is set to 0 and the average left alone. That says
the EPP cannot see the queue (its pods' metrics are stale, or none runs), not that it is
empty: a replica reporting 0 ready pods is dropped, so with none left the query has no
sample and the pool holds its replicas, as for any missing metric. (Up to v1.2 both keep
their last values then.)

Several EPP replicas of one pool each export the pair: the product is taken per replica
(both gauges of one scrape target carry the same labels) and the largest kept, so replicas
are not added up.

The series name no namespace of their own; the scrape adds the EPP pod's (a ServiceMonitor's
or PodMonitor's target labels put it in `namespace`), and the EPP runs in its pool's
namespace: an InferencePool's endpointPickerRef names a Service there. So each selector is
confined to the pool's namespace by `namespace_label`, always, not only with
--confine-queries: two namespaces may both have a pool of one name.
"""

from __future__ import annotations

import json

AVERAGE_QUEUE_METRIC = "inference_pool_average_queue_size"
READY_PODS_METRIC = "inference_pool_ready_pods"
POOL_NAME_LABEL = "name"


def _selector(metric: str, namespace: str, name: str, namespace_label: str) -> str:
    # JSON strings are PromQL strings; the names are DNS names, but quoting costs nothing.
    return (
        f"{metric}{{{namespace_label}={json.dumps(namespace)},"
        f"{POOL_NAME_LABEL}={json.dumps(name)}}}"
    )


def queue_query(namespace: str, name: str, namespace_label: str = "namespace") -> str:
    """PromQL for the total queue of InferencePool `namespace`/`name`: one number."""
    average = _selector(AVERAGE_QUEUE_METRIC, namespace, name, namespace_label)
    ready = _selector(READY_PODS_METRIC, namespace, name, namespace_label)
    return f"max({average} * ({ready} > 0))"
