"""Crash-safe actuation: record intent, act, record the result.

Before the fleet loop resizes anything it writes the sizes it is about to set, one id per
action, into the anchor ConfigMap (`data.intent`), with a resourceVersion precondition: a
stale leader, whose view of the anchor is older than the last record, fails that write and
does not act; one that finds the anchor written under a newer leader term is deposed
(reconcilers/leader.py). The anchor is only read and patched by name, never watched. After acting it marks the actions done. A replica that takes over (or an
operator that restarts) finds the unfinished actions there and completes them under the
same ids, unless what it observes shows them done or its own plan supersedes them. Sizes
are absolute, so re-applying one is harmless; the ids let drivers and tests tell a retry
from a new decision.

`reconcile` is pure; `Journal` adds the two Kubernetes calls.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from kubernetes.client.exceptions import ApiException

from gpufleet.reconcilers.kube import Conflict, Kube
from gpufleet.reconcilers.leader import Elector, term_of

log = logging.getLogger(__name__)

INTENT_KEY = "intent"


@dataclass(frozen=True)
class Action:
    """Set `target` (`nodepool/<provider>/<pool>` or `<Kind>/<namespace>/<name>`) to `size`."""

    id: str
    target: str
    size: int
    done: bool = False


@dataclass(frozen=True)
class Move:
    """A pool that moved replicas waits to recreate them while the pools it yielded to
    (`to`, "namespace/name") schedule their pods (reconcilers/drain.py), from `since`."""

    pool: str
    to: tuple[str, ...]
    since: float


@dataclass(frozen=True)
class Drained:
    """A pool's drain memory (reconcilers/drain.py Drainer), so that a leader that takes
    over knows what its predecessor evicted and resized: pods evicted and until when they
    may still drain (`evicted`: name, deadline), and its last resize (size, when) until the
    index shows it. Times are the writer's wall clock (the loop's `now`)."""

    pool: str
    evicted: tuple[tuple[str, float], ...] = ()
    resized: tuple[int, float] | None = None


@dataclass(frozen=True)
class Record:
    """What the anchor holds: the last recorded actions, numbered by `seq`, and the moves
    whose wait a leader that takes over must keep."""

    seq: int = 0
    leader: str = ""
    actions: tuple[Action, ...] = ()
    moves: tuple[Move, ...] = ()
    drains: tuple[Drained, ...] = ()

    def dump(self) -> str:
        out: dict[str, Any] = {
            "seq": self.seq,
            "leader": self.leader,
            "actions": [
                {"id": a.id, "target": a.target, "size": a.size, "done": a.done}
                for a in self.actions
            ],
        }
        if self.moves:
            out["moves"] = [
                {"pool": m.pool, "to": list(m.to), "since": m.since} for m in self.moves
            ]
        if self.drains:
            out["drains"] = [
                {
                    "pool": d.pool,
                    "evicted": [list(e) for e in d.evicted],
                    **({"resized": list(d.resized)} if d.resized is not None else {}),
                }
                for d in self.drains
            ]
        return json.dumps(out, sort_keys=True)

    @classmethod
    def load(cls, text: str | None) -> Record:
        if not text:
            return cls()
        try:
            raw = json.loads(text)
            return cls(
                int(raw.get("seq", 0)),
                str(raw.get("leader", "")),
                tuple(
                    Action(str(a["id"]), str(a["target"]), int(a["size"]), bool(a.get("done")))
                    for a in raw.get("actions", [])
                ),
                tuple(
                    Move(str(m["pool"]), tuple(str(t) for t in m["to"]), float(m["since"]))
                    for m in raw.get("moves", [])
                ),
                tuple(
                    Drained(
                        str(d["pool"]),
                        tuple((str(p), float(t)) for p, t in d.get("evicted", [])),
                        (int(d["resized"][0]), float(d["resized"][1]))
                        if d.get("resized")
                        else None,
                    )
                    for d in raw.get("drains", [])
                ),
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            log.warning("unreadable intent record in the anchor ConfigMap: starting afresh")
            return cls()

    @property
    def pending(self) -> tuple[Action, ...]:
        return tuple(a for a in self.actions if not a.done)


def reconcile(
    record: Record,
    planned: Mapping[str, int],
    current: Mapping[str, int],
    leader: str,
) -> tuple[Record, tuple[Action, ...]]:
    """The record to write before acting, and the actions to run.

    `planned`: target -> size this tick wants (only targets whose size changes); `current`:
    target -> size observed now, for every target that still exists. An unfinished action
    of the record that this tick's plan still wants is run again under its own id (so a
    crash between deciding and acting neither loses it nor mints a second action); one
    observed done, on a target gone, or that the plan no longer wants is dropped (level-based:
    the plan, not an old decision, sets sizes).
    New actions get ids from the next `seq`.
    """
    run: dict[str, Action] = {}
    for action in record.pending:
        now = current.get(action.target)
        if now is None or now == action.size:
            continue  # gone, or done before the crash
        if planned.get(action.target) == action.size:
            run[action.target] = action  # unfinished and still wanted: under its own id
    fresh = {t: s for t, s in sorted(planned.items()) if t not in run and current.get(t) != s}
    seq = record.seq + 1 if fresh else record.seq
    for target, size in fresh.items():
        run[target] = Action(f"{seq}.{target}={size}", target, size)
    actions = tuple(run[t] for t in sorted(run))
    if not fresh and actions == record.pending and (not actions or record.leader == leader):
        return record, actions  # nothing new to record (retries keep their ids)
    # A leader that takes over unfinished actions claims the record before it acts.
    return Record(seq, leader, actions, record.moves, record.drains), actions


def finished(record: Record, done: set[str]) -> Record:
    return replace(
        record, actions=tuple(replace(a, done=a.done or a.id in done) for a in record.actions)
    )


@dataclass
class Journal:
    """The intent record on the anchor ConfigMap `namespace/name`."""

    kube: Kube
    namespace: str
    name: str
    leader: str
    record: Record | None = None
    version: str | None = None
    read_at: float = 0.0
    # With nothing to do, trust the last record this long before reading the anchor again.
    trust_seconds: float = 10.0
    resumed: set[str] = field(default_factory=set)  # actions logged as resumed
    # With leader election: the anchor names the term of its last writer; a newer one than
    # ours means we were deposed (the record write then carries our term, kube.py).
    fence: Elector | None = None

    async def _read(self) -> Record:
        """The record on the anchor, recreating an anchor someone deleted (it holds only
        what the next tick can work out again, or moves that then end early)."""
        try:
            data, annotations, self.version = await self.kube.read_config_map_meta(
                self.namespace, self.name
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
            log.warning(
                "the anchor ConfigMap %s/%s is gone: recreating it", self.namespace, self.name
            )
            await self.kube.ensure_config_map(self.namespace, self.name)
            data, annotations, self.version = await self.kube.read_config_map_meta(
                self.namespace, self.name
            )
        self.read_at = time.monotonic()
        if self.fence is not None:
            self.fence.deposed_by(term_of(annotations))
        return Record.load(data.get(INTENT_KEY))

    async def begin(
        self, planned: Mapping[str, int], current: Mapping[str, int]
    ) -> tuple[Action, ...] | None:
        """Record what is about to be done; None when another writer got there first."""
        quiet = self.record is not None and not self.record.pending and not planned
        if quiet and time.monotonic() - self.read_at < self.trust_seconds:
            return ()  # steady state: no reads, no writes
        previous = await self._read()
        record, actions = reconcile(previous, planned, current, self.leader)
        for action in actions:
            if action in previous.pending and action.id not in self.resumed:
                self.resumed.add(action.id)  # once per action, not per tick while it waits
                log.info(
                    "resuming recorded action %s",
                    action.id,
                    extra={"actionId": action.id, "recordedBy": previous.leader},
                )
        if record != previous:
            try:
                self.version = await self._write(record)
            except Conflict:
                log.warning("intent record changed under us (another leader?): not acting")
                self.record = None
                return None
        self.record = record
        return actions

    async def finish(self, done: set[str]) -> None:
        """Mark `done` done; a conflict means a newer leader has taken over its record."""
        self.resumed -= done
        if self.record is None or not done:
            return
        await self._update(replace(finished(self.record, done), leader=self.leader), "result")

    async def recorded_moves(self) -> tuple[Move, ...]:
        """The moves the record holds (read from the anchor if not read yet)."""
        if self.record is None:
            self.record = await self._read()
        return self.record.moves

    async def recorded_drains(self) -> tuple[Drained, ...]:
        """The drain memory the record holds (read with the moves)."""
        await self.recorded_moves()
        return self.record.drains if self.record is not None else ()

    async def record_moves(
        self, moves: tuple[Move, ...], drains: tuple[Drained, ...] | None = None
    ) -> None:
        """Keep the moves waiting now (and the drain memory) in the record, written only when
        they change."""
        if self.record is None:
            return
        drains = self.record.drains if drains is None else drains
        if self.record.moves != moves or self.record.drains != drains:
            record = replace(self.record, leader=self.leader, moves=moves, drains=drains)
            await self._update(record, "moves")

    async def _update(self, record: Record, what: str) -> None:
        """Write a changed record; a conflict means a newer leader has taken it over."""
        if record == self.record:
            return
        try:
            self.version = await self._write(record)
            self.record = record
        except Conflict:
            log.warning("intent record changed under us: %s not recorded", what)
            self.record = None

    async def _write(self, record: Record) -> str:
        assert self.version is not None
        return await self.kube.patch_config_map_data(
            self.namespace, self.name, {INTENT_KEY: record.dump()}, self.version
        )


def record_of(data: Mapping[str, Any]) -> Record:
    """The intent record of an anchor ConfigMap's `data` (for tests and `inspect`)."""
    return Record.load(data.get(INTENT_KEY))
