"""A config resolved for one agent: its paths, its share of the prepared objects, its op mix.

Per-agent isolation: without shared storage every key this agent touches starts with its
``prefix`` (``agent-1/``...), so agents never see each other's objects. With shared storage
the prefix is empty and prepare/cleanup split the prepared objects by agent index (object i
belongs to agent i mod N).

Targets are never globbed per operation: each get/stat/delete pattern is resolved once, at
stage start, into a ``Pool`` of keys, which puts and deletes then keep up to date.

Memory does not grow with the number of operations. What puts create is described, not
listed: each worker's put names are ``<head><n>`` for n = 1, 2, ... (``PutKeys``), so cleanup
enumerates them from a counter. A pool remembers at most ``POOL_GROWTH`` objects beyond those
it listed at stage start; puts past that still happen (and are cleaned up) but are not added
to the pool for gets to pick.
"""

from __future__ import annotations

import fnmatch
import random
import re
import threading
from collections.abc import Callable, Iterator

import attrs

from trio_bench.config import (
    Config,
    OpSpec,
    SizeSpec,
    prepared_name,
    relative_to_target,
    split_pattern,
    tree_base,
    tree_op,
)

from ._data import Pattern
from ._tree import Tree, TreePool, TreePutKeys, sample_paths

MIX_LENGTH = 4096  # op-mix cycle per worker: exact weights over every 4096 ops, no RNG per op
# How many objects created during a stage a pool remembers beyond those it listed (about
# 100 bytes each): enough for gets to spread over, bounded however long the run.
POOL_GROWTH = 100_000


class Pool:
    """Keys one op picks from. Lock-free reads; writers (put/delete) take a short lock.

    ``pick`` may race with ``take`` in another thread and see a shrinking list: it then
    returns None rather than raise (the caller counts "no object"), and a picked key may have
    just been deleted (the backend then reports it missing, counted as an error, like any
    storage system would).
    """

    def __init__(self, directory: str, pattern: str, keys: list[str] | None = None) -> None:
        self.directory = directory
        self.pattern = pattern
        self.regex = re.compile(fnmatch.translate(pattern))
        self.keys: list[str] = keys or []
        self.limit = len(self.keys) + POOL_GROWTH
        self.not_remembered = 0  # objects created for this pool beyond its limit
        # each key's size, kept for ranged gets (they pick an offset within the object);
        # None when no op needs them
        self.sizes: dict[str, int] | None = None
        self._lock = threading.Lock()

    def fill(self, keys: list[str], sizes: dict[str, int] | None = None) -> None:
        """The keys listed at stage start; the pool may grow by ``POOL_GROWTH`` beyond them.
        ``sizes``: the listing's sizes by key (kept if the pool keeps sizes)."""
        self.keys = keys
        self.limit = len(keys) + POOL_GROWTH
        if self.sizes is not None and sizes is not None:
            self.sizes = sizes

    def matches(self, name: str) -> bool:
        return self.regex.match(name) is not None

    def pick(self, r: float) -> str | None:
        keys = self.keys
        try:
            return keys[int(r * len(keys))]
        except IndexError:
            return None

    def add(self, key: str, size: int = 0) -> None:
        if len(self.keys) < self.limit:
            if self.sizes is not None:
                self.sizes[key] = size  # before the key can be picked
            self.keys.append(key)  # list.append is atomic under the GIL
        else:
            self.not_remembered += 1

    def take(self, r: float) -> str | None:
        with self._lock:
            keys = self.keys
            n = len(keys)
            if not n:
                return None
            i = int(r * n)
            keys[i], keys[-1] = keys[-1], keys[i]
            return keys.pop()

    def __len__(self) -> int:
        return len(self.keys)


@attrs.define
class PreparedSet:
    """The prepared objects of one ``ensure_objects`` entry that belong to this agent."""

    directory: str  # key prefix including the agent prefix, ends with "/" (or is "")
    base: str  # the entry's base relative to the target, without the agent prefix
    indices: range
    size: SizeSpec
    data: Pattern
    seed: int
    tree: Tree | None = None  # the directory tree's files (sai3-bench's directory_structure)

    def key(self, index: int) -> str:
        if self.tree is not None:
            return self.directory + self.tree.path(index)
        return self.directory + prepared_name(index)

    def directories(self) -> list[str]:
        """The directories its objects are in (one, or the tree's that hold files)."""
        if self.tree is None:
            return [self.directory]
        return [self.directory + d for d in self.tree.file_dirs]

    def name(self, index: int) -> str:
        """The object's name in its directory."""
        return prepared_name(index) if self.tree is None else f"file_{index:08d}.dat"

    def size_of(self, index: int) -> int:
        """Deterministic per object, the same on every agent and every run: prepare can
        tell an existing object of the right size from one to rewrite."""
        if self.size.kind == "fixed":
            return self.size.size
        return self.size.sample(random.Random(f"{self.seed}:{self.base}:{index}"))


@attrs.define
class OpPlan:
    index: int  # position in the config's workload list (for error messages)
    kind: str
    weight: float
    path: str  # as written in the config
    directory: str  # with the agent prefix
    pattern: str  # get/stat/delete: glob on names; put: the name prefix; list: ""
    size: SizeSpec | None = None
    data: Pattern | None = None  # put: what it writes
    block_size: int | None = None  # get: one block at a random aligned offset
    access: str = "random"  # get with block_size: sequential reads an object block by block
    limit: threading.Semaphore | None = None  # at most so many in flight (all workers)
    tree: Tree | None = None  # put: new files go into the tree's directories
    pool: Pool | TreePool | None = None  # get/stat/delete
    feeds: list[Pool] = attrs.Factory(list)  # put: pools its new objects belong to
    # put: what each worker created (for cleanup)
    created: list[PutKeys | TreePutKeys] = attrs.Factory(list)


class PutKeys:
    """The objects one worker's put created: ``<head>0000000001`` ... ``<head><count>``.

    A key counts as created as soon as it is handed out (before its put), so a put that
    failed half way or was interrupted is still found by cleanup. Constant memory."""

    def __init__(self, head: str, suffix: str = "") -> None:
        self.head = head
        self.suffix = suffix  # "/" for the directories a mkdir makes
        self.count = 0

    def next_key(self) -> str:
        self.count += 1
        return f"{self.head}{self.count:010d}{self.suffix}"

    def keys(self, start: int = 0, step: int = 1) -> Iterator[str]:
        """Every ``step``-th key from the ``start``-th (0-based), in creation order."""
        head, suffix = self.head, self.suffix
        return (f"{head}{n:010d}{suffix}" for n in range(start + 1, self.count + 1, step))


def op_mix(ops: list[OpPlan], rng: random.Random) -> list[int]:
    """A shuffled cycle of op indices with exactly the configured proportions."""
    total = sum(op.weight for op in ops)
    counts = [max(1, round(op.weight / total * MIX_LENGTH)) for op in ops]
    mix = [i for i, n in enumerate(counts) for _ in range(n)]
    while len(mix) < MIX_LENGTH:  # pad rounding shortfall with the heaviest op
        mix.append(max(range(len(ops)), key=lambda i: ops[i].weight))
    mix = mix[:MIX_LENGTH]
    rng.shuffle(mix)
    return mix


class AgentPlan:
    """Everything one agent derives from the config before touching storage."""

    def __init__(
        self,
        config: Config,
        *,
        agent_index: int = 0,
        agent_count: int = 1,
        prefix: str = "",
        run_tag: str = "run",
    ) -> None:
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        self.config = config
        self.agent_index = agent_index
        self.agent_count = agent_count
        self.prefix = prefix
        self.shared = config.distributed.shared_storage
        self.run_tag = run_tag
        self.seed = config.seed if config.seed is not None else 0x7B1
        shape = config.prepare.directory_structure
        self.tree = Tree(shape) if shape is not None else None
        self.prepared = [self._prepared_set(entry) for entry in config.prepare.ensure_objects]
        self.ops = [self._op_plan(i, op) for i, op in enumerate(config.workload) if op.weight]
        self._link_pools()

    # -- construction

    def _prepared_set(self, entry: object) -> PreparedSet:
        from trio_bench.config import EnsureObjects

        assert isinstance(entry, EnsureObjects)
        base = relative_to_target(self.config.target, entry.base_uri)
        if base and not base.endswith("/"):
            base += "/"
        count = entry.count if self.tree is None else self.tree.files
        if self.shared:
            indices = range(self.agent_index, count, self.agent_count)
        else:
            indices = range(count)
        return PreparedSet(
            directory=self.prefix + base,
            base=base,
            indices=indices,
            size=entry.size,
            data=Pattern(entry.fill, entry.dedup_factor, entry.compress_factor),
            seed=self.seed,
            tree=self.tree,
        )

    def _op_plan(self, index: int, op: object) -> OpPlan:
        assert isinstance(op, OpSpec)
        plan = self._tree_op(index, op) if tree_op(self.config, op) else self._op_shape(index, op)
        if op.concurrency is not None and op.concurrency < self.config.concurrency:
            plan.limit = threading.Semaphore(op.concurrency)
        return plan

    def _tree_op(self, index: int, op: OpSpec) -> OpPlan:
        """An op on the directory tree: get/stat pick any of its files; put writes new
        files into its directories."""
        assert self.tree is not None
        directory = self.prefix + tree_base(self.config)
        if op.op in ("mkdir", "rmdir"):  # new directories in the tree's directories
            return OpPlan(index, op.op, op.weight, op.path, directory, "dir-", tree=self.tree)
        if op.op == "put":
            return OpPlan(
                index,
                op.op,
                op.weight,
                op.path,
                directory,
                "obj-",
                size=op.size,
                block_size=op.block_size,
                data=Pattern(op.fill, op.dedup_factor, op.compress_factor),
                tree=self.tree,
            )
        dist = self.config.distributed
        pool = TreePool(
            self.tree,
            directory,
            selection=dist.path_selection,
            overlap=dist.partition_overlap,
            agent_index=self.agent_index,
            agent_count=self.agent_count,
        )
        return OpPlan(index, op.op, op.weight, op.path, directory, "**", pool=pool)

    def _op_shape(self, index: int, op: OpSpec) -> OpPlan:
        if op.op in ("mkdir", "rmdir"):  # new directories named dir-<run>-a<agent>-w<w>-<n>
            directory = op.path if op.path.endswith("/") or not op.path else op.path + "/"
            return OpPlan(index, op.op, op.weight, op.path, self.prefix + directory, "dir-")
        if op.op == "list":
            directory = op.path if op.path.endswith("/") else op.path + "/"
            return OpPlan(index, op.op, op.weight, op.path, self.prefix + directory, "")
        if op.op == "put":  # sai3-bench writes `data/obj-*` for names starting `obj-`
            directory, _, name_prefix = op.path.removesuffix("*").rpartition("/")
            directory = directory + "/" if directory else ""
            return OpPlan(
                index,
                op.op,
                op.weight,
                op.path,
                self.prefix + directory,
                name_prefix or "obj-",
                size=op.size,
                block_size=op.block_size,
                data=Pattern(op.fill, op.dedup_factor, op.compress_factor),
            )
        directory, pattern = split_pattern(op.path)
        return OpPlan(
            index,
            op.op,
            op.weight,
            op.path,
            self.prefix + directory,
            pattern,
            block_size=op.block_size,
            access=op.access,
        )

    def _link_pools(self) -> None:
        """One pool per distinct (directory, pattern); puts feed the pools they match."""
        pools: dict[tuple[str, str], Pool] = {}
        for op in self.ops:
            if op.kind in ("get", "stat", "delete") and op.pool is None:
                key = (op.directory, op.pattern)
                op.pool = pools.setdefault(key, Pool(*key))
                if op.block_size is not None and op.pool.sizes is None:
                    op.pool.sizes = {}  # a ranged get picks an offset within the object
        self.pools = list(pools.values())
        made: dict[str, Pool] = {}  # rmdir takes what the mkdir on its path made
        for op in self.ops:
            if op.kind == "rmdir":
                op.pool = made.setdefault(op.path, Pool(op.directory, "dir-*"))
        for op in self.ops:
            if op.kind == "mkdir" and op.path in made:
                op.feeds = [made[op.path]]
        for op in self.ops:
            if op.kind == "put" and op.tree is None:
                sample = self.put_name(op, 0, 0)
                op.feeds = [
                    pool
                    for pool in self.pools
                    if pool.directory == op.directory and pool.matches(sample)
                ]

    # -- names

    def put_name(self, op: OpPlan, worker: int, n: int) -> str:
        """Unique across agents, workers and runs: <prefix><run>-a<agent>-w<worker>-<n>."""
        return f"{op.pattern}{self.run_tag}-a{self.agent_index}-w{worker}-{n:010d}"

    def put_keys(self, op: OpPlan, worker: int) -> PutKeys | TreePutKeys:
        """A new name counter for one worker's put, recorded in ``op.created``."""
        keys: PutKeys | TreePutKeys
        suffix = "/" if op.kind == "mkdir" else ""
        if op.tree is not None:
            keys = TreePutKeys(op.directory, op.tree, self.put_name(op, worker, 0)[:-10], suffix)
        else:
            keys = PutKeys(op.directory + self.put_name(op, worker, 0)[:-10], suffix)
        op.created.append(keys)
        return keys

    def created(self) -> list[PutKeys | TreePutKeys]:
        return [keys for op in self.ops for keys in op.created]

    def leftover_keys(
        self,
        scan: Callable[[str], dict[str, int]],
        scan_dirs: Callable[[str, str], list[str]],
    ) -> list[str]:
        """The objects this agent's puts and the directories its mkdirs created in an
        earlier session of the same run (same run tag), found by listing: what ``triobench
        cleanup`` removes after the fact. Objects first, then directories."""
        objects: list[str] = []
        directories: list[str] = []
        listed: set[tuple[str, str, str]] = set()
        for op in self.ops:
            if op.kind not in ("put", "mkdir"):
                continue
            head = f"{op.pattern}{self.run_tag}-a{self.agent_index}-w"
            where = [op.directory + d for d in op.tree.file_dirs] if op.tree else [op.directory]
            for directory in where:
                if (op.kind, directory, head) in listed:
                    continue
                listed.add((op.kind, directory, head))
                if op.kind == "put":
                    objects += [directory + n for n in scan(directory) if n.startswith(head)]
                else:
                    directories += [directory + n for n in scan_dirs(directory, head)]
        return objects + directories

    # -- facts the engine and preflight need

    def fed(self, pool: Pool | TreePool) -> bool:
        """Whether this run itself creates objects for ``pool`` (prepare or a put)."""
        if isinstance(pool, TreePool):
            return True  # prepare makes the tree
        for pset in self.prepared:
            if pset.directory == pool.directory and pool.matches(prepared_name(0)):
                return True
        return any(pool in op.feeds for op in self.ops)

    def directories(self) -> list[str]:
        """Every directory the run may touch (for confinement checks)."""
        dirs = {self.prefix} | {p.directory for p in self.prepared}
        dirs |= {op.directory for op in self.ops}
        return sorted(dirs)

    @property
    def largest_put(self) -> int:
        sizes = [p.size.largest for p in self.prepared]
        sizes += [op.size.largest for op in self.ops if op.size is not None]
        return max(sizes, default=0)

    def unmatched(self, scan: Callable[[str], dict[str, int]]) -> list[str]:
        """Patterns that match nothing now and that nothing in this run will create."""
        lines = []
        for op in self.ops:
            if isinstance(op.pool, TreePool):
                lines += self._tree_unmatched(op, op.pool)
                continue
            if op.pool is None or self.fed(op.pool):
                continue
            names = scan(op.pool.directory)
            if not any(op.pool.matches(name) for name in names):
                target = self.config.target
                where = (target if target.endswith("/") else target + "/") + op.pool.directory
                lines.append(
                    f"workload[{op.index}].path: {op.path!r} matches no objects under {where} "
                    "and nothing in this run creates any"
                )
        return lines

    def _tree_unmatched(self, op: OpPlan, pool: TreePool) -> list[str]:
        """A pattern into the tree must take its files (it picks from all of them): checked
        on the first, the last and a few between."""
        if op.path == "/":
            return []
        base = tree_base(self.config)
        samples = [base + p for p in sample_paths(pool.tree, random.Random(self.seed))]
        missed = [p for p in samples if not fnmatch.fnmatchcase(p, op.path)]
        if not missed:
            return []
        return [
            f"workload[{op.index}].path: {op.path!r} does not take every file of the "
            f"directory tree (not {missed[0]!r}); a get or stat in a tree picks from all of "
            "them: give '/' or a pattern that matches them all"
        ]

    def resolve_pools(self, scan: Callable[[str], dict[str, int]]) -> None:
        """Fill every pool from one listing of its directory (run in a thread: it is I/O)."""
        listings: dict[str, dict[str, int]] = {}
        for pool in self.pools:
            if pool.directory not in listings:
                listings[pool.directory] = scan(pool.directory)
            listing = listings[pool.directory]
            names = [n for n in sorted(listing) if pool.matches(n)]
            sizes = (
                {pool.directory + n: listing[n] for n in names} if pool.sizes is not None else None
            )
            pool.fill([pool.directory + n for n in names], sizes)
