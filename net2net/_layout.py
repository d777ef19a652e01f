"""Channel layouts: which width group owns which stretch of which tensor dimension.

A traced tensor's layout maps a dimension index to a tuple of segments. A segment is a run of
``units`` channels of one width group (``gid``), each channel owning ``block`` consecutive
elements of that dimension (``block > 1`` after a conv feature map is flattened into a vector:
channel ``c`` owns inputs ``[c·H·W, (c+1)·H·W)``). ``gid is None`` marks a stretch of fixed size,
e.g. the model input. Concatenation along a dimension concatenates segments (the paper's offsets).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import gcd


@dataclass(frozen=True)
class Seg:
    """``units`` channels of group ``gid`` (``None``: fixed size), ``block`` elements per channel."""

    gid: int | None
    units: int
    block: int = 1

    @property
    def size(self) -> int:
        return self.units * self.block


Segs = tuple[Seg, ...]
Layout = dict[int, Segs]


def canonical(segs: Segs) -> Segs:
    """Merge neighbouring fixed-size stretches so that equal layouts compare equal."""
    out: list[Seg] = []
    for s in segs:
        if s.size == 0:
            continue
        if s.gid is None and out and out[-1].gid is None:
            out[-1] = Seg(None, out[-1].size + s.size, 1)
        elif s.gid is None:
            out.append(Seg(None, s.size, 1))
        else:
            out.append(s)
    return tuple(out)


def fixed(size: int) -> Segs:
    return (Seg(None, size, 1),)


def has_groups(segs: Segs) -> bool:
    return any(s.gid is not None for s in segs)


def gids_of(layout: Layout) -> list[int]:
    return [s.gid for segs in layout.values() for s in segs if s.gid is not None]


def lcm(a: int, b: int) -> int:
    return a * b // gcd(a, b)


@dataclass
class GroupState:
    """What the trace learned about one (not yet merged) width group."""

    width: int
    order: int  # graph position of its first producer: the group's name comes from it
    producers: list[str] = field(default_factory=list)
    consumers: list[str] = field(default_factory=list)
    channelwise: list[str] = field(default_factory=list)
    blocks: int = 1  # new units must stay inside ``blocks`` equal contiguous blocks (grouped conv)
    grouped_by: list[str] = field(default_factory=list)  # the grouped convs behind ``blocks``
    balanced_by: list[str] = field(default_factory=list)  # norms that need integer replication
    reasons: list[str] = field(default_factory=list)  # why it cannot grow ("{group}" placeholder)
    elements: int = 0  # activation elements per unit and sample, summed over producer outputs
    part: int | None = None  # index of this group among the parts of a split (for its name)
    dead: bool = False  # replaced by its parts (a split) and referenced nowhere any more


class Groups:
    """Union-find over width groups: coupled groups are merged into one."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.state: list[GroupState] = []

    def new(self, width: int, order: int, producer: str) -> int:
        gid = len(self.parent)
        self.parent.append(gid)
        self.state.append(GroupState(width=width, order=order, producers=[producer]))
        return gid

    def find(self, gid: int) -> int:
        root = gid
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[gid] != root:  # path compression
            self.parent[gid], gid = root, self.parent[gid]
        return root

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if self.state[rb].order < self.state[ra].order:
            ra, rb = rb, ra
        sa, sb = self.state[ra], self.state[rb]
        self.parent[rb] = ra
        sa.producers += sb.producers
        sa.consumers += sb.consumers
        sa.channelwise += sb.channelwise
        sa.blocks = lcm(sa.blocks, sb.blocks)
        sa.grouped_by += sb.grouped_by
        sa.balanced_by += sb.balanced_by
        sa.reasons += sb.reasons
        sa.elements += sb.elements
        return ra

    def get(self, gid: int) -> GroupState:
        return self.state[self.find(gid)]

    def pin(self, gid: int, reason: str) -> None:
        st = self.get(gid)
        if reason not in st.reasons:
            st.reasons.append(reason)

    def roots(self) -> list[int]:
        live = {self.find(g) for g in range(len(self.parent))}
        return sorted((g for g in live if not self.state[g].dead), key=self._order)

    def _order(self, gid: int) -> tuple[int, int]:
        return self.state[gid].order, gid


def reshape_layout(
    in_shape: tuple[int, ...], layout: Layout, out_shape: tuple[int, ...]
) -> tuple[Layout, list[int], list[tuple[int, int]]]:
    """Follow channels through a reshape (view, flatten, unflatten, squeeze, unsqueeze).

    Returns the output layout, the groups whose channels the reshape splits or interleaves
    (those cannot be followed and must keep their width), and the groups it coarsens, as
    ``(group, f)``: splitting a channel dim into (units, inner) makes every f consecutive channels
    one unit (attention heads: (B, T, d) → (B, T, heads, head size)), and the output layout is in
    those units already. Merging a channel dim with the dims after it gives each channel a block of
    elements (conv → flatten → Linear); merging it with dims before it repeats the channel segments
    (channels-last flatten).
    """
    sa = _suffix_products(in_shape)
    sb = _suffix_products(out_shape)
    out: Layout = {}
    lost: list[int] = []
    coarse: list[tuple[int, int]] = []
    grouped = {k for k, segs in layout.items() if has_groups(segs)}
    for k in sorted(grouped):
        segs = layout[k]
        gids = [s.gid for s in segs if s.gid is not None]
        if in_shape[k] <= 1:
            lost += gids
            continue
        merged = _merge_target(sa, sb, out_shape, k)
        if merged is not None:
            j, lo, hi = merged
            if any(d in grouped for d in range(lo, hi) if d != k):
                lost += gids
                continue
            outer = sa[lo] // sa[k]
            inner = sa[k + 1] // sa[hi]
            out[j] = canonical(tuple(Seg(s.gid, s.units, s.block * inner) for s in segs) * outer)
            continue
        split = _split_target(sa, sb, out_shape, k, segs)
        if split is None:
            lost += gids
        else:
            jg, f = split
            gid = segs[0].gid
            assert gid is not None
            out[jg] = (Seg(gid, segs[0].units // f, 1),)
            if f > 1:
                coarse.append((gid, f))
    return out, lost, coarse


def _suffix_products(shape: tuple[int, ...]) -> list[int]:
    out = [1] * (len(shape) + 1)
    for i in range(len(shape) - 1, -1, -1):
        out[i] = out[i + 1] * shape[i]
    return out


def _merge_target(
    sa: list[int], sb: list[int], out_shape: tuple[int, ...], k: int
) -> tuple[int, int, int] | None:
    """The output dim that holds input dim ``k`` whole, as (dim, first, end) of the merged input
    dims; None when dim ``k`` is split."""
    for j in range(len(out_shape)):
        if out_shape[j] == 1 or sb[j + 1] > sa[k + 1] or sb[j] < sa[k]:
            continue
        lo = max((i for i in range(k + 1) if sa[i] == sb[j]), default=None)
        hi = min((i for i in range(k + 1, len(sa)) if sa[i] == sb[j + 1]), default=None)
        if lo is not None and hi is not None:
            return j, lo, hi
    return None


def _split_target(
    sa: list[int], sb: list[int], out_shape: tuple[int, ...], k: int, segs: Segs
) -> tuple[int, int] | None:
    """Dim ``k`` (one group, ``block`` elements per channel) is split so that one output dim holds
    the units and the dims after it the rest: returns (that dim, f), where each unit of the output
    is ``f`` channels of the input (f = 1 undoes an earlier flatten; f > 1 makes heads)."""
    if len(segs) != 1 or segs[0].gid is None:
        return None
    units, block = segs[0].units, segs[0].block
    starts = [j for j in range(len(out_shape) + 1) if sb[j] == sa[k]]
    ends = [j for j in range(len(out_shape) + 1) if sb[j] == sa[k + 1]]
    found: list[tuple[int, int]] = []  # (f, dim): the finest units win
    for j0 in starts:
        for j1 in ends:
            for jg in range(j0, j1):
                before = sb[j0] // sb[jg]
                after = sb[jg + 1] // sb[j1]
                if before != 1 or after % block or out_shape[jg] * after != units * block:
                    continue
                f = after // block
                if units % f == 0 and (out_shape[jg] > 1 or units == f):
                    found.append((f, jg))
    if not found:
        return None
    f, jg = min(found)
    return jg, f
