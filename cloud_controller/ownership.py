"""Which controller replica owns an agent: rendezvous (highest-random-weight) hashing.

Every replica computes ``owner(agent_id, live_replicas)`` from the same live set and gets the same
answer without talking to the others: the owner is the replica whose hash of ``(replica, agent)`` is
highest. When a replica joins, only the agents it now wins move to it (about 1/n of them); when one
leaves, only its own agents move, spread over the rest. Pure functions: no I/O, no clock.

Why not a shared subscription: mosquitto's ``$share`` hands out *messages* round-robin, so one
agent's telemetry windows would be spread over all replicas (measured: 5/5 to each of two) and each
would keep half a profile and order changes of its own. See ``cloud_controller.replicas`` for how the
live set is agreed on and ``compose/README.md`` for a broker that shares by topic hash instead.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

__all__ = ["OwnerMap", "owner", "score"]


def score(replica_id: str, agent_id: str) -> int:
    """The weight of ``replica_id`` for ``agent_id``: 64 bits of BLAKE2b, the same in every process
    and Python version (``hash()`` is salted per process, so it would not do)."""
    digest = hashlib.blake2b(f"{replica_id}\x00{agent_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(agent_id: str, replicas: Iterable[str]) -> str | None:
    """The replica that owns ``agent_id`` among ``replicas`` (None when there is none). Ties (a 64-bit
    collision) go to the larger replica id, so the answer never depends on iteration order."""
    best: tuple[int, str] | None = None
    for replica in replicas:
        key = (score(replica, agent_id), replica)
        if best is None or key > best:
            best = key
    return None if best is None else best[1]


class OwnerMap:
    """``owner()`` over one live set, memoised per agent: the controller asks on every telemetry
    message, and the answer changes only when the live set does (then make a new map)."""

    def __init__(self, replicas: Iterable[str], max_cached: int = 200_000) -> None:
        self.replicas = tuple(sorted(set(replicas)))
        self._cache: dict[str, str | None] = {}
        self._max_cached = max_cached

    def __call__(self, agent_id: str) -> str | None:
        found = self._cache.get(agent_id, "")
        if found != "":
            return found
        if len(self._cache) >= self._max_cached:
            self._cache.clear()  # bounded: forged agent ids cannot grow it without limit
        result = self._cache[agent_id] = owner(agent_id, self.replicas)
        return result
