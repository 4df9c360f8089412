"""The Kubernetes Pod Security Standards, checked in-process against a burst copy's pod
template before it is applied in a remote cluster. Pure.

The remote cluster's admission (a namespace's `pod-security.kubernetes.io/enforce` label)
checks pods, not Deployments, and only in namespaces that carry the label: a template that
breaks the standard would be applied, then its pods refused, one Event at a time, with the
pool's status none the wiser. Checking the template here refuses the copy before it exists
and says why in the pool's status, in any namespace.

The rules follow the published standard (policy version `latest`, as of Kubernetes v1.34,
which added the probe and lifecycle-hook `host` rule): Baseline forbids the known privilege
escalations, Restricted adds the hardening best practices. A Windows pod (`spec.os.name:
windows`) is exempt from the Linux-only Restricted rules, as in Kubernetes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from gpufleet.api.provider import PodSecurityLevel

BASELINE_CAPABILITIES = frozenset(
    {
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    }
)
RESTRICTED_CAPABILITIES = frozenset({"NET_BIND_SERVICE"})
SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    }
)
SELINUX_TYPES = frozenset(
    {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
)
RESTRICTED_VOLUMES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)
SECCOMP_TYPES = frozenset({"RuntimeDefault", "Localhost"})
APPARMOR_TYPES = frozenset({"RuntimeDefault", "Localhost"})
_APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"
_CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")
_PROBES = ("livenessProbe", "readinessProbe", "startupProbe")
_HOOKS = ("postStart", "preStop")


@dataclass(frozen=True)
class Violation:
    """One field of the template that the level forbids, and what it may be instead."""

    path: str  # e.g. spec.template.spec.containers[0].securityContext.privileged
    rule: str  # the standard's control, e.g. "Privileged Containers"
    allowed: str

    def __str__(self) -> str:
        return f"{self.path} ({self.rule}: {self.allowed})"


def check(
    template: Mapping[str, Any], level: PodSecurityLevel, at: str = "spec.template"
) -> list[Violation]:
    """The violations of `level` in the pod template `template` (metadata and spec), each
    named by its field path under `at`; empty when the template meets the level."""
    found = list(_baseline(template, at))
    if level == PodSecurityLevel.RESTRICTED:
        found += _restricted(template, at)
    return found


def _containers(spec: Mapping[str, Any], at: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for field in _CONTAINER_LISTS:
        for i, container in enumerate(spec.get(field) or ()):
            yield f"{at}.{field}[{i}]", container or {}


def _context(owner: Mapping[str, Any]) -> Mapping[str, Any]:
    return owner.get("securityContext") or {}


def _baseline(template: Mapping[str, Any], at: str) -> Iterator[Violation]:
    spec: Mapping[str, Any] = template.get("spec") or {}
    pod = f"{at}.spec"
    pod_context = _context(spec)
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            yield Violation(f"{pod}.{field}", "Host Namespaces", "must be unset or false")
    for i, volume in enumerate(spec.get("volumes") or ()):
        if (volume or {}).get("hostPath") is not None:
            yield Violation(f"{pod}.volumes[{i}].hostPath", "HostPath Volumes", "must be unset")
    yield from _context_rules(pod_context, f"{pod}.securityContext")
    for i, sysctl in enumerate(pod_context.get("sysctls") or ()):
        if (sysctl or {}).get("name") not in SAFE_SYSCTLS:
            yield Violation(
                f"{pod}.securityContext.sysctls[{i}].name",
                "Sysctls",
                "must be one of the safe set",
            )
    annotations = (template.get("metadata") or {}).get("annotations") or {}
    for key, value in sorted(annotations.items()):
        if key.startswith(_APPARMOR_ANNOTATION) and not (
            value == "runtime/default" or str(value).startswith("localhost/")
        ):
            yield Violation(
                f"{at}.metadata.annotations[{key}]",
                "AppArmor",
                "must be runtime/default or localhost/*",
            )
    for path, container in _containers(spec, pod):
        context = _context(container)
        where = f"{path}.securityContext"
        if context.get("privileged"):
            yield Violation(
                f"{where}.privileged", "Privileged Containers", "must be unset or false"
            )
        added = (context.get("capabilities") or {}).get("add") or ()
        for j, capability in enumerate(added):
            if capability not in BASELINE_CAPABILITIES:
                yield Violation(
                    f"{where}.capabilities.add[{j}]",
                    "Capabilities",
                    "must be one of the baseline set",
                )
        for j, port in enumerate(container.get("ports") or ()):
            if (port or {}).get("hostPort"):
                yield Violation(f"{path}.ports[{j}].hostPort", "Host Ports", "must be unset or 0")
        if context.get("procMount") not in (None, "Default"):
            yield Violation(f"{where}.procMount", "/proc Mount Type", "must be unset or Default")
        yield from _handler_hosts(container, path)
        yield from _context_rules(context, where)


def _handler_hosts(container: Mapping[str, Any], path: str) -> Iterator[Violation]:
    """Baseline since Kubernetes v1.34: a probe or lifecycle hook that names a `host` has the
    kubelet, on the node's network, call any address (a metadata service, the kubelet's own
    ports) for the pod; unset, it calls the pod's own IP."""
    handlers = [(f"{path}.{probe}", container.get(probe)) for probe in _PROBES]
    hooks = container.get("lifecycle") or {}
    handlers += [(f"{path}.lifecycle.{hook}", hooks.get(hook)) for hook in _HOOKS]
    for where, handler in handlers:
        for action in ("httpGet", "tcpSocket"):
            if ((handler or {}).get(action) or {}).get("host"):
                yield Violation(
                    f"{where}.{action}.host",
                    "Probes / Lifecycle Hooks host",
                    "must be unset or empty",
                )


def _context_rules(context: Mapping[str, Any], where: str) -> Iterator[Violation]:
    """The Baseline rules a pod's and a container's securityContext share."""
    if (context.get("windowsOptions") or {}).get("hostProcess"):
        yield Violation(
            f"{where}.windowsOptions.hostProcess", "HostProcess", "must be unset or false"
        )
    apparmor = (context.get("appArmorProfile") or {}).get("type")
    if apparmor is not None and apparmor not in APPARMOR_TYPES:
        yield Violation(
            f"{where}.appArmorProfile.type", "AppArmor", "must be RuntimeDefault or Localhost"
        )
    selinux = context.get("seLinuxOptions") or {}
    if selinux.get("type") not in (None, *SELINUX_TYPES):
        yield Violation(
            f"{where}.seLinuxOptions.type", "SELinux", "must be unset or a container_* type"
        )
    for field in ("user", "role"):
        if selinux.get(field):
            yield Violation(f"{where}.seLinuxOptions.{field}", "SELinux", "must be unset")
    seccomp = (context.get("seccompProfile") or {}).get("type")
    if seccomp is not None and seccomp not in SECCOMP_TYPES:
        yield Violation(
            f"{where}.seccompProfile.type", "Seccomp", "must be RuntimeDefault or Localhost"
        )


def _restricted(template: Mapping[str, Any], at: str) -> Iterator[Violation]:
    spec: Mapping[str, Any] = template.get("spec") or {}
    pod = f"{at}.spec"
    pod_context = _context(spec)
    for i, volume in enumerate(spec.get("volumes") or ()):
        kinds = sorted(k for k in (volume or {}) if k != "name")
        for kind in kinds:
            if kind not in RESTRICTED_VOLUMES and kind != "hostPath":  # Baseline names hostPath
                yield Violation(
                    f"{pod}.volumes[{i}].{kind}",
                    "Volume Types",
                    "must be configMap, csi, downwardAPI, emptyDir, ephemeral, "
                    "persistentVolumeClaim, projected or secret",
                )
    pod_non_root = pod_context.get("runAsNonRoot") is True
    if pod_context.get("runAsNonRoot") is False:
        yield Violation(
            f"{pod}.securityContext.runAsNonRoot", "Running as Non-root", "must be true"
        )
    if pod_context.get("runAsUser") == 0:
        yield Violation(
            f"{pod}.securityContext.runAsUser", "Running as Non-root user", "must not be 0"
        )
    linux = ((spec.get("os") or {}).get("name") or "linux") != "windows"
    pod_seccomp = (pod_context.get("seccompProfile") or {}).get("type") in SECCOMP_TYPES
    for path, container in _containers(spec, pod):
        context = _context(container)
        where = f"{path}.securityContext"
        non_root = context.get("runAsNonRoot")
        if non_root is False or (non_root is None and not pod_non_root):
            yield Violation(
                f"{where}.runAsNonRoot",
                "Running as Non-root",
                "must be true here or in the pod's securityContext",
            )
        if context.get("runAsUser") == 0:
            yield Violation(f"{where}.runAsUser", "Running as Non-root user", "must not be 0")
        if not linux:
            continue
        if context.get("allowPrivilegeEscalation") is not False:
            yield Violation(
                f"{where}.allowPrivilegeEscalation", "Privilege Escalation", "must be false"
            )
        if (context.get("seccompProfile") or {}).get("type") is None and not pod_seccomp:
            yield Violation(
                f"{where}.seccompProfile.type",
                "Seccomp",
                "must be RuntimeDefault or Localhost here or in the pod's securityContext",
            )
        capabilities = context.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or ()):
            yield Violation(f"{where}.capabilities.drop", "Capabilities", "must include ALL")
        for j, capability in enumerate(capabilities.get("add") or ()):
            if capability in BASELINE_CAPABILITIES - RESTRICTED_CAPABILITIES:
                yield Violation(
                    f"{where}.capabilities.add[{j}]", "Capabilities", "only NET_BIND_SERVICE"
                )
