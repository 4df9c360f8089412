"""keda-ca as a platform team runs it (arrival trigger, 300 s Cluster Autoscaler delays,
PriorityClass preemption) against keda-ca-defaults, driven view by view."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gpufleet.planner.types import NodePoolKey, NodePoolObservation, PoolKey
from gpufleet.sim.engine import _Replay, prepare
from gpufleet.sim.policies import make
from gpufleet.sim.policies.keda_ca import KedaCaPolicy
from gpufleet.sim.policy import Decision, Scrape, View
from gpufleet.sim.scenario import parse_scenario

from .builders import h100_node_pool, priorities, provider_doc

CHAT = PoolKey("inference", "chat")
IMAGE = PoolKey("inference", "image")
H100 = NodePoolKey("c", "h100")


def _pool(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "gpufleet.io/v1alpha1",
        "kind": "ServingPool",
        "metadata": {"name": name, "namespace": "inference"},
        "spec": {
            "scaleTargetRef": {"name": name},
            "gpuTypes": ["H100"],
            "queue": {"query": "q", "targetPerReplica": 4, "arrivalRateQuery": "r"},
            "serviceRates": [{"gpuType": "H100", "requestsPerMinute": 60}],  # 1 request/s
            "minReplicas": 1,
            "maxReplicas": 32,
            "slo": {"queueWaitSeconds": 10},
        },
    }


def _policy(name: str) -> KedaCaPolicy:
    """The policy, set up on a fleet of 1-GPU H100 nodes with a chat and an image pool."""
    raw = {
        "name": "keda",
        "durationSeconds": 60,
        "fleet": {
            "inline": [
                provider_doc([h100_node_pool(maxNodes=64, bootSeconds=60)]),
                _pool("chat"),
                _pool("image"),
                *priorities("inference", {"chat": 1000, "image": 100}),
            ]
        },
        "workloads": [
            {"pool": "inference/chat", "profile": "none", "trace": {"source": "synthetic"}},
            {"pool": "inference/image", "profile": "none", "trace": {"source": "synthetic"}},
        ],
    }
    policy = make(name)
    assert isinstance(policy, KedaCaPolicy)
    _Replay(prepare(parse_scenario(raw, Path())), policy)  # sets the policy up
    return policy


def _view(
    t: float,
    chat: int,
    arrivals: float = 0.0,
    queue: float = 0.0,
    nodes: int | None = None,
    chat_bound: int | None = None,
    image: int = 0,
) -> View:
    """Chat with `chat` replicas (all scheduled unless `chat_bound`), image with `image`,
    on `nodes` Ready 1-GPU nodes (as many as replicas unless given)."""
    bound = chat if chat_bound is None else chat_bound
    ready = bound + image if nodes is None else nodes
    return View(
        t=t,
        epoch=t,
        scrape=Scrape(t, {CHAT: queue, IMAGE: 0.0}, {CHAT: arrivals, IMAGE: 0.0}, {}),
        replicas={CHAT: {H100: chat}, IMAGE: {H100: image}},
        bound={CHAT: {H100: bound}, IMAGE: {H100: image}},
        pending={CHAT: chat - bound, IMAGE: 0},
        node_pools={H100: NodePoolObservation(ready, ready)},
    )


def _chat(d: Decision) -> int:
    return d.replicas[CHAT][H100]


def test_keda_ca_scales_on_arrivals_when_the_queue_is_empty() -> None:
    # 6.6 requests/s and nothing queued: the arrival trigger (target 70 % of 1 request/s)
    # wants ceil(6.6 / 0.7) = 10 replicas; the queue trigger alone wants none
    view = _view(0.0, chat=8, arrivals=6.6)
    assert _chat(_policy("keda-ca").decide(view)) == 10
    defaults = _policy("keda-ca-defaults")
    assert _chat(defaults.decide(view)) == 8  # the HPA's first sight: what runs, held
    assert _chat(defaults.decide(_view(315.0, chat=8, arrivals=6.6))) == 1  # minReplicas


def test_the_hpa_holds_the_replicas_it_finds_for_the_scale_down_window() -> None:
    # As the HPA records a target's current replicas as its first recommendation: a
    # started (or restarted) controller does not scale down before its window has passed.
    policy = _policy("keda-ca")
    assert _chat(policy.decide(_view(0.0, chat=8, arrivals=0.7))) == 8
    assert _chat(policy.decide(_view(285.0, chat=8, arrivals=0.7))) == 8
    assert _chat(policy.decide(_view(315.0, chat=8, arrivals=0.7))) == 1


def test_keda_ca_holds_replicas_300_s_after_arrivals_drop() -> None:
    # HPA's default scale-down stabilization: the highest recommendation of the last 300 s
    policy, replicas, history = _policy("keda-ca"), 10, []
    for t in range(0, 900, 15):
        arrivals = 6.6 if t < 120 else 0.6  # 1 replica's worth from t = 120
        replicas = _chat(policy.decide(_view(float(t), chat=replicas, arrivals=arrivals)))
        history.append((t, replicas))
    dropped = next(t for t, r in history if r < 10)
    assert dropped == 105 + 315  # the last 10 (t = 105) leaves the 300 s window at t = 420
    assert history[-1][1] == 1


def test_cluster_autoscaler_removes_an_unneeded_node_after_its_unneeded_time() -> None:
    # Six Ready nodes, three replicas: three nodes unneeded from t = 0
    removed = {}
    for name in ("keda-ca", "keda-ca-defaults"):
        policy = _policy(name)
        removed[name] = next(
            t
            for t in range(0, 1200, 5)
            if H100 in (d := policy.decide(_view(float(t), chat=3, nodes=6, arrivals=2.0))).nodes
            and d.nodes[H100] < 6
        )
    assert removed == {"keda-ca": 300, "keda-ca-defaults": 600}


def test_cluster_autoscaler_removes_no_node_within_300_s_of_a_scale_up() -> None:
    # Two of four nodes unneeded from t = 0; at t = 200 a pending replica makes Cluster
    # Autoscaler add a fifth. The unneeded time is up at t = 300, the delay after the add
    # only at t = 500.
    policy, removals = _policy("keda-ca"), []
    for t in range(0, 900, 5):
        if t == 200:
            view = _view(200.0, chat=5, chat_bound=4, nodes=4, arrivals=1.3)
            assert policy.decide(view).nodes[H100] == 5
            continue
        view = _view(float(t), chat=2, nodes=4 if t < 200 else 5, arrivals=1.3)
        nodes = policy.decide(view).nodes.get(H100)
        if nodes is not None and nodes < (4 if t < 200 else 5):
            removals.append(t)
    assert removals[0] == 500


def test_pending_chat_preempts_image_only_with_priority_classes() -> None:
    # Two Ready nodes, both taken: one chat and one image replica. A second chat replica is
    # pending: kube-scheduler evicts the lower-priority image replica for it.
    view = _view(5.0, chat=2, chat_bound=1, image=1, nodes=2, arrivals=1.4)
    assert _policy("keda-ca").decide(view).evict == {IMAGE: {H100: 1}}
    assert _policy("keda-ca-defaults").decide(view).evict == {}
