"""Evaluate expressions over a whole `Panel` at once, sharing common sub-expressions across a batch.

A batch (e.g. Alpha158's 158 expressions) is compiled into one DAG of unique nodes — frozen AST nodes
are hashable, so `Mean($close, 5)` appearing in ten features is computed once. Nodes are evaluated in
post-order and freed as soon as their last consumer is done, so peak memory is the outputs plus a few
live intermediates, not every sub-expression.

Invariant: every intermediate array is float64 (N, T) and NaN outside each instrument's listing span,
which is what makes whole-panel arithmetic agree with qlib's per-instrument series.
"""

from __future__ import annotations

import heapq
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import ModuleType
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from quantcore import kernels
from quantcore.data.panel import Panel, populate
from quantcore.errors import ExpressionError
from quantcore.expr.ast import (
    EMA,
    Binary,
    Const,
    CrossSection,
    Expanding,
    Field,
    If,
    Mask,
    Node,
    Ref,
    Rolling,
    Unary,
    children,
    walk,
)
from quantcore.expr.cache import DiskCache, MemoryCache, cache_key
from quantcore.expr.canonical import canonical
from quantcore.expr.validate import compile_expression
from quantcore.kernels import available_cores

__all__ = ["Evaluator", "evaluate"]

# Element-wise numpy implementations. Comparisons return 0/1 and 0 where an operand is NaN, like qlib
# (numpy's comparison of NaN is False); logical ops use numpy truthiness (non-zero, NaN included),
# which is what qlib's `If` (np.where) does with a NaN condition.
_ARITH = {
    "Add": np.add,
    "Sub": np.subtract,
    "Mul": np.multiply,
    "Div": np.divide,
    "Power": np.power,
    "Greater": np.maximum,
    "Less": np.minimum,
}
_COMPARE = {
    "Gt": np.greater,
    "Ge": np.greater_equal,
    "Lt": np.less,
    "Le": np.less_equal,
    "Eq": np.equal,
    "Ne": np.not_equal,
}
_LOGIC = {"And": np.logical_and, "Or": np.logical_or}
_UNARY = {"Neg": np.negative, "Abs": np.abs, "Sign": np.sign, "Log": np.log}
_PASS_NODES = (Rolling, Expanding, EMA, CrossSection)  # nodes whose panel a kernel pass makes


@dataclass(frozen=True)
class _Compiled:
    name: str
    node: Node


class Evaluator:
    """Evaluates expressions on one panel.

    compat=True reproduces qlib 0.9.7 exactly (WMA's extra division, NaN-unaware IdxMax, absolute std
    thresholds); compat=False uses the corrected definitions documented in `quantcore.kernels`.
    Caches are optional explicit objects; a cached result is keyed by the panel's content version, the
    expression's canonical form, the semantics and the output dtype.
    """

    def __init__(
        self,
        panel: Panel,
        *,
        compat: bool = True,
        float32_arithmetic: bool = False,
        threads: int | None = None,
        memory_cache: MemoryCache | None = None,
        disk_cache: DiskCache | None = None,
        backend: ModuleType = kernels,
    ):
        self.panel = panel
        self.backend = backend  # `quantcore.kernels`, or its slow pandas twin for checks and benchmarks
        self.compat = compat
        # qlib stores fields as float32 and numpy keeps element-wise results on them in float32 (pandas
        # window functions return float64). True rounds exactly those results to float32, reproducing
        # qlib's numbers bit for bit where float32 rounding shows; False keeps float64 throughout.
        self.float32_arithmetic = float32_arithmetic
        self.threads = threads
        self.memory_cache = memory_cache
        self.disk_cache = disk_cache
        self._semantics = ("qlib" if compat else "corrected") + ("-f32" if float32_arithmetic else "")

    # ---- public API ------------------------------------------------------------------------------
    def compile(self, expressions: Mapping[str, str | Node], *, allow_future: bool = False) -> list[_Compiled]:
        """Parse and validate every expression; errors name the offending expression."""
        out = []
        fields = self.panel.field_names
        for name, expr in expressions.items():
            try:
                node = compile_expression(expr, fields, allow_future=allow_future)
            except ExpressionError as exc:
                raise _named(exc, name) from None
            out.append(_Compiled(name, node))
        return out

    def evaluate(
        self, expressions: Mapping[str, str | Node], *, allow_future: bool = False, dtype: np.dtype | type = np.float32
    ) -> dict[str, np.ndarray]:
        """Compute each expression as an (N, T) array of `dtype`, NaN outside listing spans."""
        compiled = self.compile(expressions, allow_future=allow_future)
        dtype = np.dtype(dtype)
        shape = (self.panel.n_instruments, self.panel.n_days)
        results: dict[str, np.ndarray] = {}
        pending: list[_Compiled] = []
        keys: dict[str, str] = {}
        # no cache, no keys: the panel's version hashes every field (~100 ms on 300 x 2520 x 8 fields),
        # which a throwaway evaluator (a look-ahead check's perturbed panel) would pay on every use
        caching = self.memory_cache is not None or self.disk_cache is not None
        for item in compiled:
            hit = None
            if caching:
                key = keys[item.name] = cache_key(self.panel.version, canonical(item.node), self._semantics, dtype)
                hit = self._cache_get(key, shape)
            if hit is not None:
                results[item.name] = hit
            else:
                pending.append(item)
        computed: dict[int, np.ndarray] = {}

        def keep(i: int, arr: np.ndarray) -> None:
            computed[i] = arr.astype(dtype, copy=True)

        self._evaluate_nodes([item.node for item in pending], keep)
        for i, item in enumerate(pending):
            if caching:
                self._cache_put(keys[item.name], computed[i])
            results[item.name] = computed[i]
        return {item.name: results[item.name] for item in compiled}

    def frame(
        self,
        expressions: Mapping[str, str | Node],
        *,
        start=None,
        end=None,
        allow_future: bool = False,
        dtype: np.dtype | type = np.float32,
    ) -> pd.DataFrame:
        """Evaluate on the full history (so look-backs are warm) and return in-span rows in [start, end]
        as a frame indexed by (datetime, instrument), one column per expression."""
        window = self.panel.date_index(start, end)
        if self.memory_cache is not None or self.disk_cache is not None:
            arrays = self.evaluate(expressions, allow_future=allow_future, dtype=dtype)
            return self.panel.to_frame(arrays, days=window, dtype=dtype)
        # No cache to fill: copy each result into its frame column the moment it is computed, while
        # it is still in cache, instead of keeping (N, T) copies and gathering them afterwards. The
        # block (hundreds of MB for a wide set) is populated on a thread meanwhile (GIL-free, in
        # chunks, so other threads' allocations wait little), from the start: parsing and planning
        # run on this thread alone, leaving a core free. Nothing waits for it: a column written
        # first maps its own pages. The frame's index (20 ms, mostly NumPy) is built after it there.
        block = self.panel.empty_block(len(expressions), window, dtype, prefault=False)
        stop = threading.Event()
        with ThreadPoolExecutor(max_workers=1) as mapper:
            mapper.submit(populate, block, stop)
            index = mapper.submit(self.panel.frame_index, window)
            try:
                compiled = self.compile(expressions, allow_future=allow_future)

                def gather(i: int, arr: np.ndarray) -> None:
                    self.panel.fill_column(block, i, arr, window)

                self._evaluate_nodes([item.node for item in compiled], gather)
            except BaseException:
                stop.set()  # a bad expression or a failed kernel: stop mapping, skip the index
                index.cancel()
                raise
        return pd.DataFrame(block, index=index.result(), columns=[c.name for c in compiled], copy=False)

    # ---- caches ----------------------------------------------------------------------------------
    def _cache_get(self, key: str, shape: tuple[int, int]) -> np.ndarray | None:
        if self.memory_cache is not None:
            arr = self.memory_cache.get(key)
            if arr is not None:
                return arr
        if self.disk_cache is not None:
            arr = self.disk_cache.get(key, shape)
            if arr is not None:
                if self.memory_cache is not None:
                    self.memory_cache.put(key, arr)
                return arr
        return None

    def _cache_put(self, key: str, arr: np.ndarray) -> None:
        if self.disk_cache is not None:
            self.disk_cache.put(key, arr)
        if self.memory_cache is not None:
            self.memory_cache.put(key, arr)

    # ---- DAG evaluation --------------------------------------------------------------------------
    def _evaluate_nodes(self, roots: Sequence[Node], emit: Callable[[int, np.ndarray], None]) -> None:
        """Evaluate the union DAG of `roots`; `emit(i, values)` receives root i's result (float64, valid
        only during the call). Intermediates are freed by reference count, and an intermediate used for
        the last time is handed to its consumer as the output buffer, so most element-wise steps
        allocate nothing. With more than one core, independent nodes run on two worker threads (numpy
        and the kernels release the GIL), each kernel then single-threaded. Window operators that
        share a pass over the same input and window (`kernels.SHARED_PASS`) are computed together."""
        if not roots:
            return
        plan = _plan(roots, (self.panel.n_instruments, self.panel.n_days), hasattr(self.backend, "rolling_group"))
        workers = 1 if self.threads == 1 else min(2, available_cores())
        if workers > 1 and len(plan.order) > 8:
            self._run_parallel(plan, emit, workers)
        else:
            self._run_sequential(plan, emit)

    def _compute_node(self, node: Node, values, plan: "_Plan", single: set, threads: int | None) -> dict:
        """{node: value}, or {member: value} for every member of node's shared-pass group."""
        group = plan.groups.get(node)
        if group is None:
            return {node: self._step(node, values, plan, single, threads)}
        first = group[0]
        outs = self.backend.rolling_group(
            [m.op for m in group],
            self._array(values[first.inputs[0]]),
            first.window,
            self.panel.starts,
            self.panel.ends,
            params=[m.param for m in group],
            compat=self.compat,
            threads=threads or self.threads,
            outs=[plan.buffers.take() for _ in group],
        )
        return dict(zip(group, outs))

    def _step(self, node: Node, values, plan: "_Plan", single: set, threads: int | None):
        """Compute one node (its children are done); picks a spare buffer among last-use children."""
        kids = children(node)
        uses = Counter(kids)
        spare = next((values[k] for k in kids if plan.refs[k] == uses[k] and _owned(k, values[k])), None)
        if self.float32_arithmetic and _float32_in_qlib(node, single):
            single.add(node)
            return self._compute_float32(node, values, plan.buffers)
        return self._compute(node, values, plan.buffers, spare, threads)

    def _emit(self, node: Node, value, plan: "_Plan", emit) -> None:
        """Hand a root's result to `emit` for each position it was requested at."""
        result = self._array(value)
        for i in plan.positions[node]:
            emit(i, result)

    def _finish(self, node: Node, values, plan: "_Plan", emit=None) -> None:
        """After `node` is computed: release children it used last, hand out root results (unless
        `emit` is None: a worker did that already)."""
        for child in children(node):
            plan.refs[child] -= 1
            if plan.refs[child] == 0:
                self._release(child, values, plan, values[node])
        if node in plan.positions:
            if emit is not None:
                self._emit(node, values[node], plan, emit)
            plan.refs[node] -= len(plan.positions[node])
            if plan.refs[node] == 0:
                self._release(node, values, plan, None)

    @staticmethod
    def _release(node: Node, values, plan: "_Plan", in_use) -> None:
        """Drop a value nobody needs any more; an array the evaluator made goes back to the pool
        unless it lives on as `in_use` (a parent that took it as its output buffer)."""
        value = values.pop(node)
        if _owned(node, value) and value is not in_use:
            plan.buffers.give(value)

    def _run_sequential(self, plan: "_Plan", emit) -> None:
        values: dict[Node, np.ndarray | float] = {}
        single: set[Node] = set()  # nodes whose qlib dtype is float32 (see float32_arithmetic)
        early: dict[Node, np.ndarray] = {}  # group members computed with an earlier one
        for node in plan.order:
            if node not in early:
                early.update(self._compute_node(node, values, plan, single, None))
            values[node] = early.pop(node)
            self._finish(node, values, plan, emit)

    def _run_parallel(self, plan: "_Plan", emit, workers: int) -> None:
        """Ready-list scheduling with no dispatcher: each worker (this thread and workers - 1 others)
        takes the ready node of lowest post-order rank (so memory is freed early), computes it, emits
        it if it is a root (copying a result out is a good part of the work, and its buffer is still
        in cache), and does the bookkeeping itself under one lock (a hand-off through a scheduling
        thread cost about 0.4 ms per node). A child's buffer is offered as spare only when every other
        consumer has finished, so a running consumer never sees its input overwritten."""
        values: dict[Node, np.ndarray | float] = {}
        single: set[Node] = set()
        waiting = {node: len(set(children(node))) for node in plan.order}
        consumers: dict[Node, list[Node]] = {}
        for node in plan.order:
            for child in set(children(node)):
                consumers.setdefault(child, []).append(node)
        rank = {node: i for i, node in enumerate(plan.order)}
        ready = [(rank[node], node) for node in plan.order if waiting[node] == 0]  # ranks are unique
        heapq.heapify(ready)
        taken: set[Node] = set()  # group members computed along with another member
        running = [0]
        failure: list[BaseException] = []
        lock = threading.Condition()

        def make_ready(node: Node) -> None:
            heapq.heappush(ready, (rank[node], node))

        def take() -> Node | None:
            """The next node to compute (under the lock); None when all is done or a worker failed."""
            while not failure:
                while ready:
                    node = heapq.heappop(ready)[1]
                    if node in taken:
                        continue
                    if isinstance(node, (Field, Const)) and node not in plan.positions:  # nothing to compute
                        values[node] = self._step(node, values, plan, single, 1)
                        self._complete(node, values, plan, consumers, waiting, make_ready)
                        continue
                    taken.update(m for m in plan.groups.get(node, ()) if m is not node)
                    running[0] += 1
                    return node
                if running[0] == 0:
                    return None
                lock.wait()
            return None

        def work() -> None:
            while True:
                with lock:
                    node = take()
                    if node is None:
                        lock.notify_all()
                        return
                try:
                    results = self._compute_node(node, values, plan, single, 1)
                    for member, value in results.items():
                        if member in plan.positions:
                            self._emit(member, value, plan, emit)
                except BaseException as exc:
                    with lock:
                        failure.append(exc)
                        running[0] -= 1
                        lock.notify_all()
                    return
                with lock:
                    running[0] -= 1
                    for member, value in results.items():
                        values[member] = value
                        self._complete(member, values, plan, consumers, waiting, make_ready)
                    lock.notify_all()

        helpers = [
            threading.Thread(target=work, name=f"quantcore-evaluator-{i}", daemon=True) for i in range(workers - 1)
        ]
        for helper in helpers:
            helper.start()
        try:
            work()
        finally:  # the helpers finish what they run (they stop taking nodes once one failed)
            for helper in helpers:
                helper.join()
        if failure:
            raise failure[0]

    def _complete(self, node, values, plan, consumers, waiting, make_ready: Callable[[Node], None]) -> None:
        self._finish(node, values, plan)
        for parent in consumers.get(node, ()):
            waiting[parent] -= 1
            if waiting[parent] == 0:
                make_ready(parent)

    def _compute(
        self,
        node: Node,
        values: Mapping[Node, np.ndarray | float],
        buffers: "_Buffers",
        spare: np.ndarray | None = None,
        threads: int | None = None,
    ):
        """One node's value: an (N, T) float64 array, or a float for constant sub-expressions (numpy
        broadcasts them, so `x / 2` never materialises a panel of 2s). `spare` is a float64 panel the
        caller no longer needs, usable as the output of element-wise steps; `buffers` recycles the
        panels of finished nodes as outputs of the others."""
        p = self.panel
        fresh = buffers.take
        starts, ends = p.starts, p.ends
        threads = threads or self.threads  # a worker passes 1: an OpenMP team inside it only contends
        if isinstance(node, Field):
            return p.field(node.name)  # the panel's own array: read-only, never a `spare`
        if isinstance(node, Const):
            return node.value
        if isinstance(node, Unary):
            x = values[node.x]
            if node.op == "Not":
                return self._masked((~_truthy(x)).astype(np.float64))
            with np.errstate(all="ignore"):
                return _UNARY[node.op](x, **_out(spare, fresh, x))
        if isinstance(node, Binary):
            a, b = values[node.left], values[node.right]
            with np.errstate(all="ignore"):
                if node.op in _ARITH:
                    return _ARITH[node.op](a, b, **_out(spare, fresh, a, b))
                if node.op in _COMPARE:
                    return self._masked(self._array(_COMPARE[node.op](a, b)).astype(np.float64))
                if node.op in _LOGIC:
                    return self._masked(self._array(_LOGIC[node.op](_truthy(a), _truthy(b))).astype(np.float64))
            raise ExpressionError(f"unknown binary operator {node.op!r}")
        if isinstance(node, If):
            cond = _truthy(values[node.cond])
            return self._masked(self._array(np.where(cond, values[node.then], values[node.otherwise])).copy())
        if isinstance(node, Ref):
            return self.backend.shift(
                self._array(values[node.x]), node.periods, starts, ends, threads=threads, out=fresh()
            )
        if isinstance(node, (Rolling, Expanding)):
            window = node.window if isinstance(node, Rolling) else 0
            inputs = [self._array(values[i]) for i in node.inputs]
            if len(inputs) == 2:
                return self.backend.pair_rolling(
                    node.op,
                    inputs[0],
                    inputs[1],
                    window,
                    starts,
                    ends,
                    compat=self.compat,
                    threads=threads,
                    out=fresh(),
                )
            return self.backend.rolling(
                node.op,
                inputs[0],
                window,
                starts,
                ends,
                param=node.param,
                compat=self.compat,
                threads=threads,
                out=fresh(),
            )
        if isinstance(node, EMA):
            return self.backend.ema(self._array(values[node.x]), node.spec, starts, ends, threads=threads, out=fresh())
        if isinstance(node, Mask):
            try:
                row = p.instruments.index(node.instrument)
            except ValueError:
                raise ExpressionError(
                    f"Mask refers to instrument {node.instrument!r}, which is not in panel {p.name!r}"
                ) from None
            x = self._array(values[node.x])
            return self._masked(np.broadcast_to(x[row], x.shape).copy())
        if isinstance(node, CrossSection):
            groups = self._array(values[node.group]) if node.group is not None else None
            return self.backend.cross_section(
                node.op, self._array(values[node.x]), starts, ends, groups=groups, param=node.param, threads=threads
            )
        raise ExpressionError(f"cannot evaluate node {node!r}")

    def _compute_float32(self, node: Node, values: Mapping[Node, np.ndarray | float], buffers: "_Buffers"):
        """An element-wise node computed the way qlib does on float32 data: the numpy op runs in
        float32 (Python-number operands do not widen it), then the result is held as float64."""
        if isinstance(node, Field):  # qlib stores fields as float32 (a no-op for data read from qlib files)
            return self.panel.field(node.name).astype(np.float32).astype(np.float64)
        if isinstance(node, Ref):
            return self._compute(node, values, buffers)  # shifting float32 values does not round
        f32 = [values[k].astype(np.float32) if isinstance(values[k], np.ndarray) else values[k] for k in children(node)]
        with np.errstate(all="ignore"):
            result = _UNARY[node.op](f32[0]) if isinstance(node, Unary) else _ARITH[node.op](f32[0], f32[1])
        return np.asarray(result, dtype=np.float64) if isinstance(result, np.ndarray) else float(result)

    def _array(self, value: np.ndarray | float) -> np.ndarray:
        """A full (N, T) panel for a value that may be a constant (NaN outside listing spans)."""
        if isinstance(value, np.ndarray) and value.ndim == 2:
            return value
        return self._masked(np.full((self.panel.n_instruments, self.panel.n_days), float(value)))

    def _masked(self, arr: np.ndarray) -> np.ndarray:
        """Blank the outside of listing spans (for ops that make numbers out of NaN: comparisons, ...)."""
        np.copyto(arr, np.nan, where=self.panel.outside_span)
        return arr


@dataclass
class _Plan:
    order: list  # unique nodes in post-order (children first)
    refs: dict  # node -> consumers still to run (parent edges + root uses)
    positions: dict  # root node -> its positions in the requested list
    buffers: "_Buffers"  # released panels, reused as outputs
    groups: dict  # node -> the window operators computed in one pass with it (itself included)


class _Buffers:
    """Panels of finished nodes, handed out again as outputs of later ones.

    A batch like Alpha158 makes hundreds of (N, T) intermediates; allocating each afresh costs page
    faults, and in a new process fresh pages are the slow kind (about 2x the kernel time on a 2-core
    VM), so a few released panels are kept for reuse. take/give are single list operations, atomic
    under the GIL, so one worker may take while another gives."""

    def __init__(self, shape: tuple[int, int], limit: int = 16):
        self.shape = shape
        self.limit = limit
        self._free: list[np.ndarray] = []

    def take(self) -> np.ndarray:
        try:
            return self._free.pop()
        except IndexError:
            return np.empty(self.shape)

    def give(self, arr: np.ndarray) -> None:
        if (
            len(self._free) < self.limit
            and arr.shape == self.shape
            and arr.dtype == np.float64
            and arr.flags.c_contiguous
            and arr.flags.writeable
            and arr.base is None
        ):
            self._free.append(arr)


def _plan(roots: Sequence[Node], shape: tuple[int, int], shared_passes: bool = True) -> _Plan:
    """The union DAG of `roots`: post-order of unique nodes (roots reading a common window result
    taken together, see `_roots_by_window_result`), reference counts and, with `shared_passes`, the
    groups of window operators one kernel pass computes together."""
    reads = [[node for node in walk(root) if isinstance(node, _PASS_NODES)] for root in roots]
    unique = dict.fromkeys(node for nodes in reads for node in nodes)
    groups = _shared_pass_groups(unique) if shared_passes else {}
    order, refs = _post_order(_roots_by_window_result(roots, reads, groups))
    positions: dict[Node, list[int]] = {}
    for i, root in enumerate(roots):
        positions.setdefault(root, []).append(i)
    return _Plan(order, refs, positions, _Buffers(shape), groups)


def _post_order(roots: Sequence[Node]) -> tuple[list[Node], dict[Node, int]]:
    """Unique nodes of the roots' DAG, children first, and each node's number of uses (parent edges
    and root positions; the same for any order of the roots)."""
    refs: dict[Node, int] = {}
    order: list[Node] = []
    seen: set[Node] = set()
    for root in roots:
        refs[root] = refs.get(root, 0) + 1
        stack: list[tuple[Node, bool]] = [(root, False)]
        while stack:
            node, expanded = stack.pop()
            if expanded:
                order.append(node)
                continue
            if node in seen:
                continue
            seen.add(node)
            stack.append((node, True))
            for child in children(node):
                refs[child] = refs.get(child, 0) + 1
                if child not in seen:
                    stack.append((child, False))
    return order, refs


def _roots_by_window_result(roots: Sequence[Node], reads: Sequence[Sequence[Node]], groups: dict) -> list[Node]:
    """The roots, those that read a common window result (reads[i]: root i's Rolling, Expanding, EMA
    and cross-sectional nodes; a shared-pass group counts as one result), directly or through other
    roots, moved together behind the first of them.

    Features that read one window result are then computed together and the panel is freed early.
    In the order they were asked for, siblings' panels wait for their last reader: Alpha158's
    QTLU5..60 then QTLD5..60 held twenty group panels (26 live at the peak), SUMP5..60, SUMN5..60,
    SUMD5..60 ten Sum panels until SUMD (17 live), MAX, MIN, RSV, IMAX, IMIN, IMXD twenty."""
    parent = list(range(len(roots)))  # union-find over root positions; a set's representative is its first root

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    reader: dict = {}
    for i, nodes in enumerate(reads):
        for node in nodes:
            a, b = find(i), find(reader.setdefault(groups.get(node, node), i))
            parent[max(a, b)] = min(a, b)
    return [roots[i] for i in sorted(range(len(roots)), key=lambda i: (find(i), i))]


def _shared_pass_groups(nodes: Iterable[Node]) -> dict:
    """node -> tuple of the Rolling nodes (among `nodes`, each once) sharing its kernel pass
    (kernels.SHARED_PASS family, same input and window), for groups of two or more; Alpha158's
    QTLU/QTLD, BETA/RSQR/RESI, MAX/IMAX."""
    by_key: dict[tuple, list[Node]] = {}
    for node in nodes:
        if isinstance(node, Rolling) and len(node.inputs) == 1 and node.op in kernels.SHARED_PASS:
            by_key.setdefault((kernels.SHARED_PASS[node.op], node.inputs, node.window), []).append(node)
    groups: dict[Node, tuple] = {}
    for members in by_key.values():
        for i in range(0, len(members), kernels.MAX_GROUP):
            chunk = tuple(members[i : i + kernels.MAX_GROUP])
            if len(chunk) > 1:
                groups.update(dict.fromkeys(chunk, chunk))
    return groups


def _float32_in_qlib(node: Node, single: set) -> bool:
    """Whether qlib's value for `node` is float32: a field, or an element-wise op whose array operands
    are all float32 (Python-number operands do not widen under numpy's promotion rules). Window
    operators return pandas' float64; comparisons are booleans."""
    if isinstance(node, Field):
        return True
    if isinstance(node, Unary) and node.op != "Not":
        return node.x in single
    if isinstance(node, Binary) and node.op in _ARITH:
        operands = [k for k in (node.left, node.right) if not isinstance(k, Const)]
        return bool(operands) and all(k in single for k in operands)
    if isinstance(node, Ref):
        return node.x in single
    return False


def _owned(node: Node, value) -> bool:
    """Whether a node's value is an array the evaluator made (so it may be overwritten once unused)."""
    return isinstance(value, np.ndarray) and value.ndim == 2 and not isinstance(node, Field)


def _out(spare: np.ndarray | None, fresh: Callable[[], np.ndarray], *operands) -> dict:
    """`out=` for a numpy ufunc whose result is a full panel (some operand is one): the spare, else a
    recycled buffer."""
    if not any(isinstance(o, np.ndarray) and o.ndim == 2 for o in operands):
        return {}
    return {"out": spare if spare is not None else fresh()}


def _truthy(x: np.ndarray) -> np.ndarray:
    return x != 0  # NaN != 0 is True: numpy's (and so qlib's) truthiness


def _named(exc: ExpressionError, name: str) -> ExpressionError:
    """Prefix an expression error with the name of the feature it came from."""
    exc.args = (f"in {name!r}: {exc.args[0]}",) + tuple(exc.args[1:])
    return exc


def evaluate(panel: Panel, expressions: Mapping[str, str | Node], **options) -> dict[str, np.ndarray]:
    """One-shot helper: `Evaluator(panel).evaluate(expressions, **options)`."""
    return Evaluator(panel).evaluate(expressions, **options)
