"""Least-active-sessions balancer for gale, in Python (world `balancer`).

Every eligible backend is returned, lowest priority tier first, each tier
ordered by active sessions per unit of weight; equal loads take turns.
"""

from typing import List, Tuple

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host, pool_state
from wit_world.imports.types import Backend, RequestContext


class Policy:
    """The plugin's state, kept in one module-level object: componentize-py
    makes a new `Selector` for every call into the component, so anything
    stored on a `Selector` is gone by the next call."""

    def __init__(self) -> None:
        self.rotate = True
        # [(priority, [(id, weight), ...]), ...], ascending priority. Built
        # once per pool push so that select only asks for live numbers.
        self.tiers: List[Tuple[int, List[Tuple[int, int]]]] = []
        # Advances once per select; it picks which of a run of equally
        # loaded backends goes first.
        self.turn = 0

    def set_pool(self, pool: List[Backend]) -> None:
        # The host's definition of "can take a session": a backend failing
        # any of these must never be returned (weight 0 means no new ones).
        by_priority = {}
        for b in pool:
            if b.healthy and not b.draining and b.weight > 0:
                by_priority.setdefault(b.priority, []).append((b.id, b.weight))
        # Lower tiers first: the first tier with an eligible backend takes the
        # sessions, the ones above it are only retry fallbacks.
        self.tiers = sorted(by_priority.items())

    def select(self) -> List[int]:
        self.turn += 1
        order: List[int] = []
        for _, tier in self.tiers:
            order.extend(self.order_tier(tier))
        return order

    def order_tier(self, tier: List[Tuple[int, int]]) -> List[int]:
        # Sessions in flight change with every session, so they are read now,
        # never cached. Float division is exact enough: it is monotonic, so it
        # never inverts two loads, and equal ratios (1/2, 2/4) give the same
        # float; at worst two loads within 2**-53 of each other count as tied.
        # The id makes the base order (and "first") deterministic.
        loaded = sorted((pool_state.active_sessions(i) / w, i) for i, w in tier)
        if not self.rotate:
            return [i for _, i in loaded]
        # Rotate each run of equal loads by `turn`: with a run of k backends,
        # each one leads once every k selects instead of the lowest id always
        # winning (which would send every burst at an idle pool to it).
        out: List[int] = []
        n = len(loaded)
        start = 0
        while start < n:
            load = loaded[start][0]
            end = start + 1
            while end < n and loaded[end][0] == load:
                end += 1
            run = [i for _, i in loaded[start:end]]
            k = self.turn % len(run)
            out.extend(run[k:])
            out.extend(run[:k])
            start = end
        return out


POLICY = Policy()


class Selector(exports.Selector):
    def init(self, settings: List[Tuple[str, str]]) -> None:
        for key, value in settings:
            if key != "tie_break":
                raise Err(f"unknown setting `{key}`")
            if value not in ("rotate", "first"):
                raise Err(f"tie_break must be \"rotate\" or \"first\", not `{value}`")
            POLICY.rotate = value == "rotate"
        host.log(host.Level.INFO, "least-active-python ready",
                 [("tie_break", "rotate" if POLICY.rotate else "first")])

    def set_pool(self, pool: List[Backend], listeners: List[str]) -> None:
        POLICY.set_pool(pool)

    def select(self, ctx: RequestContext) -> List[int]:
        return POLICY.select()
