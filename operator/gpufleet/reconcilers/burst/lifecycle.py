"""Whose objects in a remote cluster are this installation's, and when a CloudProvider with a
remote cluster may go. Pure: reconcilers/burst/teardown.py makes the calls.

Two gpufleet installations may share a remote cluster, even a provider name there. So
everything one makes there (copies, their Services, the namespaces it creates) carries its
identity, `gpufleet.io/installation` (`--installation`, kept as a label value), and each
lists, resizes and deletes only what carries its own. The identity is configuration, never
generated: a new one would orphan every running copy. Objects made before the label existed
have none; an installation adopts (labels) such a copy only when the pool it serves is one of
its own, so an upgrade keeps its copies and never takes those of a pool it does not have.

A CloudProvider with `cluster.kubeconfigSecretRef` carries the finalizer
`gpufleet.io/remote-copies`: deleting it first scales its copies there to 0 (pods end
gracefully), deletes them, then the namespaces gpufleet created for them; the finalizer goes
when nothing of that is left, or after the deletion timeout whatever is left (the remote
credentials may be gone for good), with an Event that names it.
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime

from gpufleet.api.labels import CREATED_BY_LABEL, INSTALLATION_LABEL

# A label value: at most 63 characters, alphanumeric at both ends.
_LABEL_VALUE = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
DEFAULT_DELETION_TIMEOUT = 600.0  # seconds (`--provider-deletion-timeout`)
# Copies scaled to 0 are deleted once their pods are gone, or this long into the deletion.
DRAIN_SECONDS = 120.0


def installation_id(setting: str) -> str:
    """`setting` (`--installation`) as a label value: itself when it is one, else a readable
    head and a hash of the whole (a long setting may exceed 63 characters),
    so that one setting always gives one id."""
    setting = setting.strip()
    if not setting:
        raise ValueError("the installation id must not be empty")
    if _LABEL_VALUE.fullmatch(setting):
        return setting
    digest = hashlib.sha256(setting.encode()).hexdigest()[:16]
    head = re.sub(r"[^A-Za-z0-9_.-]+", "-", setting)[:46].strip("-_.")
    return f"{head}-{digest}" if head else digest


class Owner(enum.Enum):
    OURS = "Ours"
    UNLABELLED = "Unlabelled"  # made before installations were labelled
    OTHER = "Other"


def owner(labels: Mapping[str, str] | None, installation: str) -> Owner:
    """Whose object with `labels` is, for the installation `installation`."""
    found = (labels or {}).get(INSTALLATION_LABEL)
    if found is None:
        return Owner.UNLABELLED
    return Owner.OURS if found == installation else Owner.OTHER


def claims(
    labels: Mapping[str, str] | None,
    installation: str,
    pool: object,
    known: Collection[object],
) -> Owner | None:
    """Whether `installation` takes the copy with `labels`, serving `pool`: OURS as it is,
    UNLABELLED to adopt (label) first, only when `pool` is among its `known` pools; None:
    not its copy."""
    found = owner(labels, installation)
    if found == Owner.OURS or (found == Owner.UNLABELLED and pool in known):
        return found
    return None


def created_by(namespace: Mapping[str, object], installation: str) -> bool:
    """Whether gpufleet created the namespace with metadata `namespace`, as `installation` or
    before installations were labelled (so `installation` may use and delete it)."""
    labels = namespace.get("labels")
    labels = labels if isinstance(labels, Mapping) else {}
    return labels.get(CREATED_BY_LABEL) == "gpufleet" and owner(labels, installation) != Owner.OTHER


@dataclass(frozen=True)
class Remains:
    """What is left in a deleted provider's remote cluster of this installation's burst."""

    copies: int = 0
    pods: int = 0
    # Namespaces gpufleet created for the provider's copies that are still there.
    namespaces: tuple[str, ...] = ()
    # Of those, the ones kept because they hold what is not gpufleet's (never deleted).
    kept: tuple[str, ...] = ()
    # Why the remote cluster could not be looked at (unreachable, credentials gone).
    problem: str | None = None

    @property
    def clear(self) -> bool:
        """Nothing left to remove: the finalizer may go (kept namespaces stay, said so)."""
        return not self.copies and not self.problem and set(self.namespaces) <= set(self.kept)

    def describe(self) -> str:
        if self.problem:
            return f"remote cluster not reachable ({self.problem})"
        if self.copies:  # the namespaces are looked at once the copies are gone
            return f"{self.copies} copies ({self.pods} pods)"
        going = sorted(set(self.namespaces) - set(self.kept))
        parts = [
            f"0 copies; {len(going)} namespaces" + (f" ({', '.join(going[:5])})" if going else "")
        ]
        if self.kept:
            parts.append(f"kept namespaces {', '.join(self.kept[:5])} (they hold other objects)")
        return "; ".join(parts)


class Step(enum.Enum):
    """What becomes of a CloudProvider's finalizer this tick."""

    NOTHING = "Nothing"
    ADD = "Add"
    WAIT = "Wait"  # being deleted: its copies are being removed
    REMOVE = "Remove"
    ABANDON = "Abandon"  # timed out: removed whatever is left, and an Event says what


def finalizer_step(
    *,
    remote: bool | None,
    has_finalizer: bool,
    deleting_since: float | None,
    now: float,
    timeout: float,
    remains: Remains | None,
) -> Step:
    """The finalizer's step for a CloudProvider: `remote` whether it has a kubeconfigSecretRef
    (None: its spec is invalid), `deleting_since` its deletionTimestamp, `remains` what its
    remote cluster still holds of this installation's (None: not looked at)."""
    if deleting_since is None:
        if remote and not has_finalizer:
            return Step.ADD
        if remote is False and has_finalizer:
            return Step.REMOVE  # no remote cluster (any more): nothing to wait for
        return Step.NOTHING
    if not has_finalizer:
        return Step.NOTHING
    if remote is False:
        # Deleted after its kubeconfigSecretRef was taken away: its finalizer says it had a
        # remote cluster, which can no longer be looked at. What ran there may still run, so
        # the finalizer goes with the Warning, never with "removed".
        return Step.ABANDON
    if remains is not None and remains.clear:
        return Step.REMOVE
    if now - deleting_since >= timeout:
        return Step.ABANDON
    return Step.WAIT


def removing_message(remains: Remains | None, deleting_since: float, timeout: float) -> str:
    """The Deleting condition's message while a provider's copies go."""
    what = remains.describe() if remains is not None else "the spec is invalid: not looked at"
    deadline = datetime.fromtimestamp(deleting_since + timeout).astimezone()
    return (
        f"removing burst copies from the remote cluster: {what} left; the finalizer goes at "
        f"the latest at {deadline.isoformat(timespec='seconds')} (deletion timeout "
        f"{int(timeout)} s)"
    )


def abandoned_message(
    remains: Remains | None, timeout: float, provider: str, installation: str
) -> str:
    """The Event of a provider whose finalizer went on the timeout, naming what is left and
    how to find it in the remote cluster."""
    what = remains.describe() if remains is not None else "unknown (invalid spec)"
    return (
        f"gave up after {int(timeout)} s; left in the remote cluster: {what}. Remove them "
        f"there: objects labelled gpufleet.io/provider={provider}, "
        f"{INSTALLATION_LABEL}={installation}"
    )


def deletion_time(text: str | None) -> float | None:
    """An API timestamp (`2025-01-02T03:04:05Z`) in seconds; None when absent or unreadable."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
