"""Leader election on a `coordination.k8s.io/v1` Lease, and the fence every write passes.

One Lease in the operator namespace names the leader (`holderIdentity`); `leaseTransitions`
is the term, raised by one on every acquisition. All writes to the Lease carry the
resourceVersion they were decided on, so two candidates never both win a round.

Expiry is judged by observation, never by comparing `renewTime` (written with the holder's
wall clock) with ours: a candidate takes the Lease over once it has seen the same
resourceVersion for a whole `leaseDurationSeconds` of its own monotonic clock (boot time on
Linux, so a suspended host counts the time it was away). Clock offsets between replicas
therefore do not matter; only rates do, and the margin between the renew deadline and the
duration (a third of it) is far above any clock's drift.

The leader trusts its term for `renew_deadline` after the start of its last successful
renewal, by the same clock. Every write checks that first (`Fence.fresh`); writes that
act on the fleet also re-read the Lease (`Fence.confirm`) after reading the version of the
object they write, and send that version as a precondition. docs/security.md "Leader
hand-over" gives the argument and the window that remains.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Protocol

from gpufleet.reconcilers.kube import TERM_ANNOTATION, Conflict

log = logging.getLogger(__name__)


def boot_clock() -> float:
    """Seconds that keep counting while the host is suspended (CLOCK_BOOTTIME on Linux)."""
    if hasattr(time, "CLOCK_BOOTTIME"):
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    return time.monotonic()


class NotLeading(Exception):
    """This replica may not write now; `reason` says why (for logs and metrics)."""

    reason = "NotLeading"


class LeaseStale(NotLeading):
    """Not renewed within the renew deadline: another replica may hold the Lease by now."""

    reason = "LeaseStale"


class Deposed(NotLeading):
    """The Lease or an object names a newer term: another replica leads."""

    reason = "Deposed"


@dataclass(frozen=True)
class Timing:
    """Lease duration; the leader stops trusting its term at two thirds of it, and tries to
    renew five times per duration (so a renewal may fail twice before the deadline)."""

    duration: float

    @property
    def renew_deadline(self) -> float:
        return self.duration * 2 / 3

    @property
    def retry(self) -> float:
        return max(0.1, self.duration / 5)

    @property
    def write_timeout(self) -> float:
        """How long a fenced write may take in flight: a quarter of the duration, inside the
        D/3 between the leader's deadline and a standby's takeover."""
        return self.duration / 4


@dataclass(frozen=True)
class LeaseState:
    """What a Lease says, as far as the election reads it."""

    holder: str
    duration: float
    transitions: int
    version: str
    acquired: str = ""

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> LeaseState:
        spec = body.get("spec") or {}
        meta = body.get("metadata") or {}
        return cls(
            str(spec.get("holderIdentity") or ""),
            float(spec.get("leaseDurationSeconds") or 0),
            int(spec.get("leaseTransitions") or 0),
            str(meta.get("resourceVersion") or ""),
            str(spec.get("acquireTime") or ""),
        )


class Step(Enum):
    CREATE = "create"  # no Lease yet
    RENEW = "renew"  # ours, this term
    TAKE = "take"  # released, expired, or held under our identity by an earlier process
    WAIT = "wait"  # another holder, not expired


@dataclass
class Expiry:
    """Whether another holder's Lease has expired: unchanged (same resourceVersion) for its
    whole duration, counted from when this replica first saw that version."""

    version: str | None = None
    since: float = 0.0

    def expired(self, lease: LeaseState, now: float) -> bool:
        if lease.version != self.version:
            self.version, self.since = lease.version, now
            return False
        return now - self.since >= lease.duration


def decide(lease: LeaseState | None, me: str, term: int | None, expiry: Expiry, now: float) -> Step:
    """The next write to the Lease. `term`: the term this process holds, if any."""
    if lease is None:
        return Step.CREATE
    if lease.holder == me and lease.transitions == term:
        return Step.RENEW
    if not lease.holder or lease.holder == me:
        # Released, or held by an earlier process under our name (a restarted container of
        # this pod): its term ends now, without waiting for the Lease to expire.
        return Step.TAKE
    return Step.TAKE if expiry.expired(lease, now) else Step.WAIT


def check_term(mine: int, found: int | None) -> None:
    """Raises Deposed when an object carries a newer term than this leader's."""
    if found is not None and found > mine:
        raise Deposed(f"an object was written under term {found}, this replica leads term {mine}")


def term_of(annotations: Mapping[str, str] | None) -> int | None:
    """The term an object was written under (its `gpufleet.io/leader-term`), if readable."""
    text = (annotations or {}).get(TERM_ANNOTATION)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def micro_time(at: datetime) -> str:
    """A MicroTime as the API server parses it (six fraction digits, always)."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_body(
    namespace: str,
    name: str,
    holder: str | None,
    duration: float,
    term: int,
    now: datetime,
    acquired: str,
    version: str | None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": {"app.kubernetes.io/managed-by": "gpufleet"},
    }
    if version is not None:
        meta["resourceVersion"] = version
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": meta,
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": max(1, round(duration)),
            "acquireTime": acquired,
            "renewTime": micro_time(now),
            "leaseTransitions": term,
        },
    }


class LeaseApi(Protocol):
    """The three Lease calls of reconcilers/kube.py Kube."""

    async def read_lease(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def create_lease(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]: ...

    async def replace_lease(
        self, namespace: str, name: str, body: Mapping[str, Any]
    ) -> dict[str, Any]: ...


@dataclass
class Held:
    term: int
    valid_until: float  # by `Elector.clock`


@dataclass
class Elector:
    """This replica's side of the election: `run` keeps trying to acquire or renew;
    `leading` says whether to tick; `fresh` and `confirm` are the fence writes pass."""

    api: LeaseApi
    namespace: str
    name: str
    identity: str
    timing: Timing
    clock: Callable[[], float] = boot_clock
    wall: Callable[[], datetime] = lambda: datetime.now(tz=UTC)
    held: Held | None = None
    expiry: Expiry = field(default_factory=Expiry)
    # The highest term seen on the Lease or on an object (`gpufleet.io/leader-term`): a
    # Lease deleted or edited back never makes a term be handed out twice.
    highest: int | None = None
    # The longest leaseDurationSeconds seen, and when the Lease was first seen gone or with
    # a lower term: nobody may write it until that long has passed by our clock.
    longest: float = 0.0
    suspect_since: float | None = None

    @property
    def write_timeout(self) -> float:
        return self.timing.write_timeout

    def saw_term(self, term: int | None) -> None:
        if term is not None and (self.highest is None or term > self.highest):
            self.highest = term

    def leading(self) -> bool:
        return self.held is not None and self.clock() < self.held.valid_until

    def fresh(self) -> int:
        """This replica's term, if it renewed within the renew deadline; else raises."""
        held = self.held
        if held is None:
            raise NotLeading("this replica does not hold the lease")
        if self.clock() >= held.valid_until:
            raise LeaseStale(f"term {held.term} not renewed within the renew deadline")
        return held.term

    async def confirm(self) -> int:
        """`fresh`, then the Lease read back: still ours, same term. Call it after reading
        the version of the object about to be written."""
        term = self.fresh()
        body = await self.api.read_lease(self.namespace, self.name)
        lease = LeaseState.of(body) if body is not None else None
        if lease is None or lease.holder != self.identity or lease.transitions != term:
            self.saw_term(lease.transitions if lease is not None else None)
            self.depose(f"the lease now names {lease.holder if lease else 'nobody'}")
        return self.fresh()

    def deposed_by(self, found: int | None) -> None:
        """Steps down when an object carries a newer term than ours."""
        self.saw_term(found)
        held = self.held
        if held is not None and found is not None and found > held.term:
            self.depose(f"an object carries term {found}")

    def depose(self, why: str) -> None:
        held, self.held = self.held, None
        if held is not None:
            log.warning("deposed: %s", why, extra={"term": held.term, "lease": self.name})
        raise Deposed(why)

    async def step(self) -> None:
        """One round: read the Lease, then create, renew or take it, or wait."""
        started = self.clock()  # the leader's term counts from before its write
        body = await self.api.read_lease(self.namespace, self.name)
        # A version is dated from when the read returned, never before it could be written.
        seen = self.clock()
        lease = LeaseState.of(body) if body is not None else None
        if self._tampered(lease, seen):
            return
        term = self.held.term if self.held is not None else None
        step = decide(lease, self.identity, term, self.expiry, seen)
        if step is Step.WAIT:
            if self.held is not None:
                log.warning(
                    "lost the lease",
                    extra={"term": self.held.term, "holder": lease.holder if lease else ""},
                )
            self.held = None
            return
        now = self.wall()
        if step is Step.RENEW:
            assert lease is not None
            new_term = lease.transitions
        else:
            # Past every term seen: a Lease deleted or edited back never reissues one.
            seen_terms = (self.highest, lease.transitions if lease is not None else None)
            new_term = max((t for t in seen_terms if t is not None), default=-1) + 1
        renewing = lease is not None and step is Step.RENEW and lease.acquired
        acquired = lease.acquired if lease is not None and renewing else micro_time(now)
        written = lease_body(
            self.namespace,
            self.name,
            self.identity,
            self.timing.duration,
            new_term,
            now,
            acquired,
            None if lease is None else lease.version,
        )
        try:
            if lease is None:
                await self.api.create_lease(self.namespace, written)
            else:
                await self.api.replace_lease(self.namespace, self.name, written)
        except Conflict:
            return  # someone wrote first: the next round reads what they wrote
        if step is not Step.RENEW:
            log.info("acquired the lease", extra={"term": new_term, "lease": self.name})
        self.saw_term(new_term)
        self.held = Held(new_term, started + self.timing.renew_deadline)

    def _tampered(self, lease: LeaseState | None, now: float) -> bool:
        """True while this round must not write the Lease: it names another term than the
        one held (gone, or edited: the term is dropped), or it was seen vanish or its term
        go down, less than a whole duration ago by our clock (a leader may still act)."""
        held = self.held
        if held is not None and (
            lease is None or lease.holder != self.identity or lease.transitions != held.term
        ):
            self.held = None
            log.warning(
                "lost the lease",
                extra={"term": held.term, "holder": lease.holder if lease else ""},
            )
        if lease is not None:
            self.longest = max(self.longest, lease.duration)
        lowered = self.highest is not None and (lease is None or lease.transitions < self.highest)
        if not lowered:
            self.suspect_since = None
            self.saw_term(lease.transitions if lease is not None else None)
            return held is not None and self.held is None
        if self.suspect_since is None:
            log.warning(
                "the lease was deleted or its term lowered: waiting a whole duration",
                extra={"term": self.highest, "lease": self.name},
            )
            self.suspect_since = now
        wait = max(self.longest, self.timing.duration)
        return held is not None or now - self.suspect_since < wait

    async def run(self) -> None:
        while True:
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the API server is away: the term runs out by itself
                log.warning("lease round failed: %s", exc, extra={"lease": self.name})
            await asyncio.sleep(self.timing.retry)

    async def release(self) -> None:
        """Hand the Lease back (shutdown): a standby takes it at its next round."""
        held, self.held = self.held, None
        if held is None:
            return
        body = await self.api.read_lease(self.namespace, self.name)
        lease = LeaseState.of(body) if body is not None else None
        if lease is None or lease.holder != self.identity or lease.transitions != held.term:
            return
        written = lease_body(
            self.namespace,
            self.name,
            None,
            self.timing.duration,
            held.term,
            self.wall(),
            lease.acquired or micro_time(self.wall()),
            lease.version,
        )
        try:
            await self.api.replace_lease(self.namespace, self.name, written)
            log.info("released the lease", extra={"term": held.term, "lease": self.name})
        except Conflict:
            pass  # changed meanwhile: not ours to release any more
