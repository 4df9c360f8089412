"""Burst copies and the Pod Security Standards: a pool's template reaches a cluster that is
not its tenant's, so before gpufleet applies a copy there it checks the template against
the provider's level (Baseline or Restricted) in-process. Each rule of each level is
checked here on its own, naming the field that breaks it; a compliant template passes, and
so do the shipped examples' workloads at the default level."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpufleet.api.provider import PodSecurityLevel
from gpufleet.reconcilers.burst.podsecurity import check

BASELINE = PodSecurityLevel.BASELINE
RESTRICTED = PodSecurityLevel.RESTRICTED
ROOT = Path(__file__).resolve().parents[2]
C0 = "spec.template.spec.containers[0]"
SC0 = f"{C0}.securityContext"


def _template(**pod: Any) -> dict[str, Any]:
    """A pod template that meets Restricted (and so Baseline), with `pod` over its spec."""
    spec: dict[str, Any] = {
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [
            {
                "name": "server",
                "image": "server:1",
                "ports": [{"containerPort": 8000}],
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]},
                },
            }
        ],
        "volumes": [{"name": "cache", "emptyDir": {}}],
    }
    spec.update(pod)
    return {"metadata": {"labels": {"app": "chat"}}, "spec": spec}


def _with_container(**context: Any) -> dict[str, Any]:
    """The compliant template with `context` merged into its container's securityContext."""
    template = _template()
    template["spec"]["containers"][0]["securityContext"].update(context)
    return template


def _paths(template: dict[str, Any], level: PodSecurityLevel) -> list[str]:
    return [v.path for v in check(template, level)]


def test_a_compliant_template_meets_both_levels() -> None:
    assert check(_template(), RESTRICTED) == []
    assert check(_template(), BASELINE) == []


def test_a_plain_template_meets_baseline_but_not_restricted() -> None:
    plain = {"spec": {"containers": [{"name": "server", "image": "server:1"}]}}
    assert check(plain, BASELINE) == []
    assert set(_paths(plain, RESTRICTED)) == {
        f"{SC0}.runAsNonRoot",
        f"{SC0}.allowPrivilegeEscalation",
        f"{SC0}.seccompProfile.type",
        f"{SC0}.capabilities.drop",
    }


@pytest.mark.parametrize("field", ["hostNetwork", "hostPID", "hostIPC"])
def test_baseline_refuses_host_namespaces(field: str) -> None:
    assert _paths(_template(**{field: True}), BASELINE) == [f"spec.template.spec.{field}"]
    assert check(_template(**{field: False}), BASELINE) == []


def test_baseline_refuses_privileged_containers_in_every_container_list() -> None:
    template = _with_container(privileged=True)
    template["spec"]["initContainers"] = [
        {"name": "fetch", "securityContext": {"privileged": True}}
    ]
    violations = check(template, BASELINE)
    assert [v.path for v in violations] == [
        "spec.template.spec.initContainers[0].securityContext.privileged",
        f"{SC0}.privileged",
    ]
    assert violations[1].rule == "Privileged Containers"
    assert check(_with_container(privileged=False), BASELINE) == []


def test_baseline_allows_only_the_baseline_capabilities() -> None:
    allowed = _with_container(capabilities={"add": ["CHOWN", "NET_BIND_SERVICE"]})
    assert check(allowed, BASELINE) == []
    refused = _with_container(capabilities={"add": ["CHOWN", "SYS_ADMIN", "NET_RAW"]})
    assert _paths(refused, BASELINE) == [
        f"{SC0}.capabilities.add[1]",
        f"{SC0}.capabilities.add[2]",
    ]


def test_baseline_refuses_host_path_volumes() -> None:
    template = _template(volumes=[{"name": "root", "hostPath": {"path": "/"}}])
    assert _paths(template, BASELINE) == ["spec.template.spec.volumes[0].hostPath"]


def test_baseline_refuses_host_ports() -> None:
    template = _template()
    template["spec"]["containers"][0]["ports"] = [
        {"containerPort": 8000, "hostPort": 0},
        {"containerPort": 9000, "hostPort": 9000},
    ]
    assert _paths(template, BASELINE) == [f"{C0}.ports[1].hostPort"]


def test_baseline_refuses_host_process_windows_pods() -> None:
    template = _template(securityContext={"windowsOptions": {"hostProcess": True}})
    assert _paths(template, BASELINE) == [
        "spec.template.spec.securityContext.windowsOptions.hostProcess"
    ]


def test_baseline_refuses_unconfined_apparmor_by_field_and_by_annotation() -> None:
    assert _paths(_with_container(appArmorProfile={"type": "Unconfined"}), BASELINE) == [
        f"{SC0}.appArmorProfile.type"
    ]
    assert check(_with_container(appArmorProfile={"type": "Localhost"}), BASELINE) == []
    template = _template()
    key = "container.apparmor.security.beta.kubernetes.io/server"
    template["metadata"]["annotations"] = {key: "unconfined"}
    assert _paths(template, BASELINE) == [f"spec.template.metadata.annotations[{key}]"]
    template["metadata"]["annotations"] = {key: "runtime/default"}
    assert check(template, BASELINE) == []


def test_baseline_refuses_custom_selinux_types_users_and_roles() -> None:
    assert check(_with_container(seLinuxOptions={"type": "container_t"}), BASELINE) == []
    assert _paths(_with_container(seLinuxOptions={"type": "spc_t"}), BASELINE) == [
        f"{SC0}.seLinuxOptions.type"
    ]
    options = {"user": "system_u", "role": "system_r", "level": "s0:c1"}
    assert _paths(_with_container(seLinuxOptions=options), BASELINE) == [
        f"{SC0}.seLinuxOptions.user",
        f"{SC0}.seLinuxOptions.role",
    ]


def test_baseline_refuses_an_unmasked_proc_mount() -> None:
    assert _paths(_with_container(procMount="Unmasked"), BASELINE) == [f"{SC0}.procMount"]
    assert check(_with_container(procMount="Default"), BASELINE) == []


def test_baseline_refuses_a_host_in_probes_and_lifecycle_hooks() -> None:
    """Since Kubernetes v1.34: the kubelet makes these calls from the node, so a `host` aims
    them at the metadata service or the kubelet itself rather than the pod."""
    template = _template()
    server = template["spec"]["containers"][0]
    server["livenessProbe"] = {"httpGet": {"host": "169.254.169.254", "path": "/", "port": 80}}
    server["readinessProbe"] = {"tcpSocket": {"host": "10.0.0.2", "port": 22}}
    server["lifecycle"] = {
        "postStart": {"httpGet": {"host": "10.0.0.1", "port": 10255, "path": "/pods"}},
        "preStop": {"tcpSocket": {"host": "10.0.0.1", "port": 10250}},
    }
    fetch = {
        "name": "fetch",
        "securityContext": copy.deepcopy(server["securityContext"]),
        "startupProbe": {"httpGet": {"host": "169.254.169.254", "port": 80}},
    }
    template["spec"]["initContainers"] = [fetch]
    expected = [
        "spec.template.spec.initContainers[0].startupProbe.httpGet.host",
        f"{C0}.livenessProbe.httpGet.host",
        f"{C0}.readinessProbe.tcpSocket.host",
        f"{C0}.lifecycle.postStart.httpGet.host",
        f"{C0}.lifecycle.preStop.tcpSocket.host",
    ]
    assert _paths(template, BASELINE) == expected
    assert _paths(template, RESTRICTED) == expected
    assert {v.rule for v in check(template, BASELINE)} == {"Probes / Lifecycle Hooks host"}


def test_probes_and_hooks_on_the_pods_own_address_are_allowed() -> None:
    template = _template()
    server = template["spec"]["containers"][0]
    server["livenessProbe"] = {"httpGet": {"host": "", "path": "/health", "port": 8000}}
    server["readinessProbe"] = {"tcpSocket": {"port": 8000}}
    server["lifecycle"] = {"preStop": {"exec": {"command": ["drain"]}}}
    assert check(template, RESTRICTED) == []


def test_baseline_refuses_unconfined_seccomp_in_pod_and_container() -> None:
    template = _with_container(seccompProfile={"type": "Unconfined"})
    template["spec"]["securityContext"]["seccompProfile"] = {"type": "Unconfined"}
    assert _paths(template, BASELINE) == [
        "spec.template.spec.securityContext.seccompProfile.type",
        f"{SC0}.seccompProfile.type",
    ]


def test_baseline_allows_only_the_safe_sysctls() -> None:
    sysctls = [
        {"name": "net.ipv4.ip_local_port_range", "value": "1024 65535"},
        {"name": "kernel.msgmax", "value": "65536"},
    ]
    template = _template()
    template["spec"]["securityContext"]["sysctls"] = sysctls
    assert _paths(template, BASELINE) == ["spec.template.spec.securityContext.sysctls[1].name"]


@pytest.mark.parametrize(
    ("volume", "kind"),
    [
        ({"nfs": {"server": "nfs", "path": "/models"}}, "nfs"),
        ({"gcePersistentDisk": {"pdName": "models"}}, "gcePersistentDisk"),
        ({"iscsi": {"targetPortal": "x", "iqn": "y", "lun": 0}}, "iscsi"),
    ],
)
def test_restricted_allows_only_the_listed_volume_types(volume: dict[str, Any], kind: str) -> None:
    template = _template(volumes=[{"name": "v", **volume}])
    assert check(template, BASELINE) == []
    assert _paths(template, RESTRICTED) == [f"spec.template.spec.volumes[0].{kind}"]


def test_restricted_allows_the_listed_volume_types() -> None:
    volumes = [
        {"name": "a", "configMap": {"name": "c"}},
        {"name": "b", "secret": {"secretName": "s"}},
        {"name": "c", "persistentVolumeClaim": {"claimName": "p"}},
        {"name": "d", "projected": {"sources": []}},
        {"name": "e", "downwardAPI": {"items": []}},
        {"name": "f", "csi": {"driver": "d"}},
        {"name": "g", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}},
    ]
    assert check(_template(volumes=volumes), RESTRICTED) == []


def test_restricted_requires_privilege_escalation_off() -> None:
    template = _with_container(allowPrivilegeEscalation=True)
    assert check(template, BASELINE) == []
    assert _paths(template, RESTRICTED) == [f"{SC0}.allowPrivilegeEscalation"]


def test_restricted_requires_non_root_in_the_pod_or_every_container() -> None:
    template = _template(securityContext={"seccompProfile": {"type": "RuntimeDefault"}})
    assert _paths(template, RESTRICTED) == [f"{SC0}.runAsNonRoot"]
    template["spec"]["containers"][0]["securityContext"]["runAsNonRoot"] = True
    assert check(template, RESTRICTED) == []
    assert _paths(_with_container(runAsNonRoot=False), RESTRICTED) == [f"{SC0}.runAsNonRoot"]


def test_restricted_refuses_user_id_zero() -> None:
    template = _with_container(runAsUser=0)
    template["spec"]["securityContext"]["runAsUser"] = 0
    assert _paths(template, RESTRICTED) == [
        "spec.template.spec.securityContext.runAsUser",
        f"{SC0}.runAsUser",
    ]
    assert check(_with_container(runAsUser=1000), RESTRICTED) == []


def test_restricted_requires_a_seccomp_profile_in_the_pod_or_the_container() -> None:
    template = _template(securityContext={"runAsNonRoot": True})
    assert _paths(template, RESTRICTED) == [f"{SC0}.seccompProfile.type"]
    template["spec"]["containers"][0]["securityContext"]["seccompProfile"] = {
        "type": "Localhost",
        "localhostProfile": "profiles/server.json",
    }
    assert check(template, RESTRICTED) == []


def test_restricted_requires_dropping_all_and_adds_only_net_bind_service() -> None:
    assert _paths(_with_container(capabilities={"drop": ["NET_RAW"]}), RESTRICTED) == [
        f"{SC0}.capabilities.drop"
    ]
    bind = _with_container(capabilities={"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]})
    assert check(bind, RESTRICTED) == []
    chown = _with_container(capabilities={"drop": ["ALL"], "add": ["CHOWN"]})
    assert check(chown, BASELINE) == []
    assert _paths(chown, RESTRICTED) == [f"{SC0}.capabilities.add[0]"]


def test_windows_pods_are_exempt_from_the_linux_only_restricted_rules() -> None:
    template = _template(os={"name": "windows"})
    template["spec"]["containers"][0]["securityContext"] = {}
    template["spec"]["securityContext"] = {"runAsNonRoot": True}
    assert check(template, RESTRICTED) == []


def test_a_violation_names_its_rule_and_what_is_allowed() -> None:
    (violation,) = check(_template(hostNetwork=True), BASELINE)
    assert str(violation) == (
        "spec.template.spec.hostNetwork (Host Namespaces: must be unset or false)"
    )


def test_the_checker_does_not_change_the_template() -> None:
    template = _with_container(privileged=True)
    before = copy.deepcopy(template)
    check(template, RESTRICTED)
    assert template == before


def _workload_templates(path: Path) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for document in yaml.safe_load_all(path.read_text()):
        if (document or {}).get("kind") in ("Deployment", "StatefulSet"):
            name = f"{path.name}:{document['metadata']['name']}"
            found.append((name, document["spec"]["template"]))
    return found


def _example_templates() -> list[tuple[str, dict[str, Any]]]:
    paths = [*sorted((ROOT / "examples").glob("*.yaml")), ROOT / "examples/demo/fleet.yaml"]
    return [t for p in paths for t in _workload_templates(p)]


def test_the_examples_have_workloads_to_check() -> None:
    names = [name for name, _ in _example_templates()]
    assert any(n.startswith("workloads.yaml:") for n in names)
    assert any(n.startswith("fleet.yaml:") for n in names)


@pytest.mark.parametrize(("name", "template"), _example_templates())
def test_the_examples_workloads_burst_at_the_default_level(
    name: str, template: dict[str, Any]
) -> None:
    assert check(template, BASELINE) == [], name
