"""The live set of controller replicas, as one replica sees it, and when it may act on it.

Each replica publishes a retained ``ControllerAlive`` heartbeat on ``{p}/controllers/{id}/alive``
every ``heartbeat_s`` (its last will: the same with ``state="offline"``) and reads everyone's,
its own included. ``Membership`` turns those heartbeats into
- the **live set** (replica ids), from which ``ownership.owner`` picks each agent's owner;
- **stability**: the live set has not changed for ``grace_beats`` heartbeats. A replica takes an
  agent over only while the view is stable, but gives one up at once when the view says it is not
  the owner. So when replica B joins, the current owner A drops B's agents as soon as B's first
  heartbeat reaches it, while B waits ``grace_beats`` (longer than ``miss_beats``, the time a
  heartbeat may be late before its replica is declared gone) before ordering anything: no agent is
  ordered by two replicas, unless a heartbeat is delayed by more than the grace period.
- **clashes**: another live instance (other nonce) with this replica's id. The newcomer refuses
  (``ReplicaIdClash``): one that has not announced itself yet, or else the one that started later.

Time is counted in this replica's **own heartbeats as they come back from the broker**, not in
wall-clock seconds: they travel through the same connection and queue as everyone else's, so a
replica that lags behind a backlog of telemetry does not declare the others dead, and one whose own
heartbeats stop coming back (``cut_off``) holds nothing. A dead replica whose connection closes
(crash, SIGKILL) is removed at once through its last will; one that vanishes silently after
``miss_beats`` of our heartbeats (the broker fires its will too, after 1.5 x its keep-alive).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from schemas import ControllerAlive

log = logging.getLogger(__name__)


class ReplicaIdClash(RuntimeError):
    """Another live controller instance uses this replica's id."""

    def __init__(self, controller_id: str, other_nonce: str) -> None:
        super().__init__(f"controller id {controller_id!r} is already in use by a live replica (instance "
                         f"{other_nonce}); give each replica its own --id")
        self.controller_id = controller_id
        self.other_nonce = other_nonce


@dataclass
class Member:
    nonce: str
    started: float
    last_beat: int  # our own heartbeat count when we last heard from it


class Membership:
    def __init__(self, controller_id: str, nonce: str, started: float, miss_beats: int = 3,
                 grace_beats: int = 4) -> None:
        if grace_beats <= miss_beats:
            raise ValueError(f"grace_beats ({grace_beats}) must exceed miss_beats ({miss_beats})")
        self.controller_id = controller_id
        self.nonce = nonce
        self.started = started
        self.miss_beats = miss_beats
        self.grace_beats = grace_beats
        self.announced = False  # set once our first heartbeat is out
        self.beats = 0  # our own heartbeats seen back from the broker
        self.members: dict[str, Member] = {}
        self.changed_at = 0
        self.live: tuple[str, ...] = ()
        self.epoch = 0  # +1 on every change of the live set
        self._resume: tuple[str, ...] | None = None  # the stable live set before a reconnect (see reset)

    def reset(self) -> None:
        """A new broker session: forget everything heard on the old one (we may have missed wills).

        If the view was stable, remember its live set: when the broker's retained heartbeats rebuild
        exactly that set by the time our own first beat comes back, every replica that was live is
        known again and nothing changed, so the view is stable at once instead of after
        ``grace_beats`` (a broker restart then costs the fleet a reconnect, not a grace period).
        A replica we had not yet heard of stays covered: its beat makes the set differ, and the
        grace applies as usual.
        """
        self._resume = self.live if self.stable else None
        self.members.clear()
        self.beats = 0
        self._changed()

    @property
    def stable(self) -> bool:
        """We are in the live set and it has not changed for ``grace_beats`` of our heartbeats."""
        return self.controller_id in self.members and self.beats - self.changed_at >= self.grace_beats

    def observe(self, alive: ControllerAlive, retained: bool) -> bool:
        """Take one heartbeat (or will) in; True if the live set changed. Raises ReplicaIdClash when
        this replica must yield its id."""
        rid = alive.controller_id
        if rid == self.controller_id and alive.nonce != self.nonce:
            if alive.state == "online" and not retained:
                self._clash(alive)
            return False  # a retained message of an earlier instance: its will or our first beat replaces it
        known = self.members.get(rid)
        if rid == self.controller_id and alive.state == "offline":
            # Our own last will: the broker took us for gone and told the others, who may have taken our
            # agents over. No resume at once: the grace period lets them give the agents back first.
            self._resume = None
        if alive.state == "offline":
            if known is not None and known.nonce == alive.nonce:
                del self.members[rid]
                log.info("replica %s left (last will)", rid)
                return self._changed()
            return False
        if rid == self.controller_id:
            if retained:
                return False  # our own beat from an earlier session, not one that just came back
            self.beats += 1
        changed = False
        if known is None or known.nonce != alive.nonce:
            self.members[rid] = Member(alive.nonce, alive.started, self.beats)
            if rid != self.controller_id:
                log.info("replica %s joined", rid)
            changed = True
        else:
            known.last_beat = self.beats
        if rid == self.controller_id:
            changed = self._expire() or changed
        result = self._changed() if changed else False
        if rid == self.controller_id and self._resume is not None:
            if self.live == self._resume:
                self.changed_at = self.beats - self.grace_beats
                log.info("replica set unchanged across the reconnect %s: stable at once", self.live)
            self._resume = None
        return result

    def _clash(self, other: ControllerAlive) -> None:
        if not self.announced or (other.started, other.nonce) < (self.started, self.nonce):
            raise ReplicaIdClash(self.controller_id, other.nonce)
        log.error("controller id %r: a newer instance (%s) started with it; it must yield", self.controller_id,
                  other.nonce)

    def _expire(self) -> bool:
        gone = [rid for rid, m in self.members.items()
                if rid != self.controller_id and self.beats - m.last_beat > self.miss_beats]
        for rid in gone:
            log.warning("replica %s missed %d heartbeats: taken as gone", rid, self.miss_beats)
            del self.members[rid]
        return bool(gone)

    def cut_off(self) -> bool:
        """Our own heartbeats stopped coming back (called by a wall-clock watchdog): hold nothing
        until they do and the view is stable again."""
        if self.controller_id not in self.members:
            return False
        del self.members[self.controller_id]
        log.warning("controller %s: own heartbeats are not coming back; holding no agents", self.controller_id)
        return self._changed()

    def _changed(self) -> bool:
        live = tuple(sorted(self.members))
        if live != self.live:
            self.live = live
            self.epoch += 1
        self.changed_at = self.beats
        return True
