"""Sharing-aware placement: which host each VM should run on so that the fleet's hosts
hold fewer copies of the same pages, within each host's RAM.

The objective is exact, not pairwise: a host whose VMs hold a content k times saves k - 1
pages by merging it, so a placement saves, summed over hosts and contents,
max(0, holders on the host - 1). Moving VM v from host A to host B changes that by the
contents v shares with B's VMs (each now saved once more) minus those it shared with A's
other VMs: both are counts over v's contents, computed against per-host content counts.

Two steps:

1. **Memory Buddies' greedy** (the baseline): VMs by RAM, largest first, each to the host
   with room whose VMs already hold the most of its contents (the emptiest host breaks
   ties).
2. **Local search** (better where it can be): from the better of the current placement
   and the greedy one, move one VM at a time to the host with room where it gains most,
   and where no move gains (full hosts), swap two VMs of different hosts, while any change
   gains; the result never saves less than either start. The greedy step packs VMs by all
   they share, so contents every VM holds (the same image) drown out smaller groups that
   share more among themselves; the swaps find those. The swap search is pruned by a bound,
   not narrowed: a swap of v (host A) and w (host B) gains v's move gain to B plus w's
   move gain to A, less, per content both hold, one for each of A and B where it is held
   once. So the two move gains bound the swap's, and only swaps whose bound beats the best
   found so far are evaluated, in order of bound (``bench/placement_scale.py`` measures
   the pruned search against the full one).

Only contents held by two VMs or more matter; the others cost the same anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from dedupx.exceptions import UsageError


@dataclass
class Placement:
    hosts: list[str]
    capacity: np.ndarray  # bytes per host
    ram: np.ndarray  # bytes per VM
    vms: list[str]
    contents: list[np.ndarray]  # per VM: ids of its contents that another VM holds
    n_contents: int
    current: np.ndarray  # host index per VM, as the fleet runs now

    def savings(self, where: np.ndarray) -> int:
        """Pages the placement ``where`` (host index per VM) saves by merging per host."""
        total = 0
        for h in range(len(self.hosts)):
            counts = self._counts(where, h)
            total += int(np.maximum(counts - 1, 0).sum())
        return total

    def _counts(self, where: np.ndarray, h: int) -> np.ndarray:
        counts = np.zeros(self.n_contents, dtype=np.int32)
        for v in np.flatnonzero(where == h):
            counts[self.contents[v]] += 1
        return counts

    def fits(self, where: np.ndarray) -> bool:
        used = np.bincount(where, weights=self.ram, minlength=len(self.hosts))
        return bool((used <= self.capacity).all())


def problem(fingerprints: pl.DataFrame, capacity: dict[str, int] | None = None) -> Placement:
    """The VMs of a fleet, their shared contents, and each host's capacity (``capacity``,
    else the host's RAM as its fingerprint states it)."""
    vms = fingerprints.filter(pl.col("kind") == "vm")
    if vms.is_empty():
        raise UsageError("the fleet holds no VM to place")
    shared = vms.with_columns(pl.len().over("hash").alias("deg")).filter(pl.col("deg") > 1)
    shared = shared.with_columns((pl.col("hash").rank("dense") - 1).cast(pl.Int64).alias("cid"))
    names = vms.select("instance", "host", "ram_bytes").unique("instance").sort("instance")
    ids = dict(shared.group_by("instance").agg("cid").iter_rows())
    hosts = sorted(fingerprints["host"].unique().to_list())
    stated = dict(
        fingerprints.filter(pl.col("kind") == "host")
        .select("host", "ram_bytes")
        .unique("host")
        .iter_rows()
    )
    cap = {h: (capacity or {}).get(h, stated.get(h, 0)) for h in hosts}
    if not all(cap.values()):
        missing = sorted(h for h, c in cap.items() if not c)
        raise UsageError(f"no capacity known for host(s) {missing[:5]}: give --capacity-gib")
    return Placement(
        hosts=hosts,
        capacity=np.array([cap[h] for h in hosts], dtype=np.float64),
        ram=names["ram_bytes"].cast(pl.Float64).to_numpy(),
        vms=names["instance"].to_list(),
        contents=[np.asarray(ids.get(v, []), dtype=np.int64) for v in names["instance"]],
        n_contents=shared["cid"].n_unique(),
        current=np.array([hosts.index(h) for h in names["host"]], dtype=np.int64),
    )


def greedy(p: Placement) -> np.ndarray:
    """Memory Buddies' heuristic: largest VMs first, each to the host with room whose VMs
    hold most of its contents."""
    where = np.full(len(p.vms), -1, dtype=np.int64)
    counts = np.zeros((len(p.hosts), p.n_contents), dtype=np.int32)
    used = np.zeros(len(p.hosts))
    for v in np.argsort(-p.ram, kind="stable"):
        room = np.flatnonzero(used + p.ram[v] <= p.capacity)
        if room.size == 0:
            raise UsageError(f"{p.vms[v]} fits on no host: the fleet lacks the capacity")
        gain = (counts[room][:, p.contents[v]] > 0).sum(axis=1)
        best = room[np.lexsort((used[room], -gain))[0]]
        where[v] = best
        counts[best, p.contents[v]] += 1
        used[best] += p.ram[v]
    return where


def local_search(
    p: Placement, start: np.ndarray, max_rounds: int = 50, prune: bool = True
) -> np.ndarray:
    """Improves ``start`` while a single VM move, or else a swap of two VMs on different
    hosts (the only change left when hosts are full), saves more pages and fits. ``prune``
    bounds the swap search (the same gains, far fewer evaluations)."""
    where = start.copy()
    counts = np.stack([p._counts(where, h) for h in range(len(p.hosts))])
    used = np.bincount(where, weights=p.ram, minlength=len(p.hosts)).astype(np.float64)
    for _ in range(max_rounds):
        if not (_moves(p, where, counts, used) or _swaps(p, where, counts, used, prune)):
            break
    return where


def _move_gain(
    p: Placement, v: int, where: np.ndarray, counts: np.ndarray, hosts: list[int] | None = None
) -> np.ndarray:
    """Per host (of ``hosts``, else of all, its own counting 0), the pages saved more if VM
    ``v`` alone moved there."""
    c = p.contents[v]
    to = counts if hosts is None else counts[hosts]
    gain = (to[:, c] > 0).sum(axis=1) - int((counts[where[v], c] > 1).sum())
    if hosts is None:
        gain[where[v]] = 0
    return gain


def _moves(p: Placement, where: np.ndarray, counts: np.ndarray, used: np.ndarray) -> bool:
    """One pass of single-VM moves, each to the host with room where it gains most."""
    moved = False
    for v in range(len(p.vms)):
        room = np.flatnonzero((used + p.ram[v] <= p.capacity) & (np.arange(len(used)) != where[v]))
        if room.size == 0:
            continue
        gain = _move_gain(p, v, where, counts)[room]
        best = int(np.argmax(gain))
        if gain[best] > 0:
            _move(p, v, room[best], where, counts, used)
            moved = True
    return moved


def _swaps(
    p: Placement, where: np.ndarray, counts: np.ndarray, used: np.ndarray, prune: bool
) -> bool:
    """One pass of swaps: for each VM, the exchange with a VM on another host that gains
    most, if any gains and both fit. With ``prune``, a partner is evaluated only while its
    bound (the two move gains) beats the best swap found."""
    n = len(p.vms)
    gains = np.stack([_move_gain(p, v, where, counts) for v in range(n)]) if prune else None
    swapped = False
    for v in range(n):
        a = where[v]
        ws = np.flatnonzero(where != a)
        b = where[ws]
        fit = (used[a] - p.ram[v] + p.ram[ws] <= p.capacity[a]) & (
            used[b] - p.ram[ws] + p.ram[v] <= p.capacity[b]
        )
        ws = ws[fit]
        if gains is not None:
            bound = gains[v, where[ws]] + gains[ws, a]
            order = np.argsort(-bound, kind="stable")
            ws, bound = ws[order], bound[order]
        best, best_w = 0, -1
        for i, w in enumerate(ws):
            if gains is not None and bound[i] <= best:
                break  # sorted: no later partner can beat the best
            gain = _swap_gain(p.contents[v], p.contents[w], counts[a], counts[where[w]])
            if gain > best:
                best, best_w = gain, int(w)
        if best_w >= 0:
            b = where[best_w]
            _move(p, v, b, where, counts, used)
            _move(p, best_w, a, where, counts, used)
            swapped = True
            if gains is not None:  # hosts a and b changed: their columns, their VMs' rows
                for u in range(n):
                    if where[u] in (a, b):
                        gains[u] = _move_gain(p, u, where, counts)
                    else:
                        gains[u, [a, b]] = _move_gain(p, u, where, counts, [a, b])
    return swapped


def _swap_gain(cv: np.ndarray, cw: np.ndarray, on_a: np.ndarray, on_b: np.ndarray) -> int:
    """Pages saved more once v (on host A) and w (on host B) change places: per content of
    either, max(count - 1, 0) on both hosts after less before."""
    both = np.union1d(cv, cw)
    in_v = np.isin(both, cv).astype(np.int32)
    in_w = np.isin(both, cw).astype(np.int32)
    ca, cb = on_a[both], on_b[both]
    na, nb = ca - in_v + in_w, cb - in_w + in_v

    def saved(x: np.ndarray) -> int:
        return int(np.maximum(x - 1, 0).sum())

    return saved(na) + saved(nb) - saved(ca) - saved(cb)


def _move(
    p: Placement, v: int, b: int, where: np.ndarray, counts: np.ndarray, used: np.ndarray
) -> None:
    a = where[v]
    counts[a, p.contents[v]] -= 1
    counts[b, p.contents[v]] += 1
    used[a] -= p.ram[v]
    used[b] += p.ram[v]
    where[v] = b


def place(
    fingerprints: pl.DataFrame, capacity: dict[str, int] | None = None, prune: bool = True
) -> dict[str, Any]:
    """Current and proposed placement of a fleet's VMs: pages saved by merging within each
    host under each (``current``, ``greedy`` for Memory Buddies' heuristic, ``proposed``),
    the ``moves`` (VM, from, to), ``vms_moved`` and ``hosts_freed`` (hosts that held VMs and
    would hold none)."""
    p = problem(fingerprints, capacity)
    current = p.current
    mb = greedy(p)
    start = mb if p.savings(mb) >= p.savings(current) else current
    best = local_search(p, start, prune=prune)
    moves = [
        {"vm": p.vms[v], "from": p.hosts[current[v]], "to": p.hosts[best[v]]}
        for v in np.flatnonzero(best != current)
    ]
    before = set(current.tolist())
    return {
        "current": p.savings(current),
        "greedy": p.savings(mb),
        "proposed": p.savings(best),
        "moves": moves,
        "vms_moved": len(moves),
        "hosts_freed": len(before - set(best.tolist())),
        "fits": p.fits(best),
    }


__all__ = ["Placement", "greedy", "local_search", "place", "problem"]
