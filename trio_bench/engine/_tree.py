"""sai3-bench's directory tree, as an agent lays it out and picks from it.

The tree is computed, never listed: directories level by level (level 1 under the base,
then each one's ``width`` children, in order), and file i in the (i // files_per_dir)-th
directory that holds files, named ``file_{i:08d}.dat``. So a pick is an index, and a tree
of millions of files costs one list of its directory names (prepare and cleanup walk the
indices; gets and stats pick one at random)."""

from __future__ import annotations

import random
from collections.abc import Iterator

from trio_bench.config import DirectoryStructure


class Tree:
    def __init__(self, shape: DirectoryStructure) -> None:
        self.shape = shape
        self.per_dir = shape.files_per_dir
        levels: list[list[str]] = []
        parents = [""]
        for level in range(1, shape.depth + 1):
            names = [_name(shape.dir_mask, level, w) for w in range(1, shape.width + 1)]
            parents = [f"{p}{n}/" for p in parents for n in names]
            levels.append(parents)
        self.directories = [d for level in levels for d in level]  # "a/", "a/b/", ...
        # the directories that hold files, in file-number order
        self.file_dirs = levels[-1] if shape.distribution == "bottom" else self.directories
        self.files = len(self.file_dirs) * self.per_dir

    def path(self, index: int) -> str:
        """File ``index``'s path under the tree's base."""
        return f"{self.file_dirs[index // self.per_dir]}file_{index:08d}.dat"

    def directory_of(self, index: int) -> str:
        return self.file_dirs[index // self.per_dir]


def _name(mask: str, level: int, position: int) -> str:
    return mask.replace("%d", str(level), 1).replace("%d", str(position), 1)


class TreePool:
    """A get/stat pool over every file of a tree (under ``directory``, the base with the
    agent prefix): picks compute a path, nothing is listed or stored."""

    def __init__(
        self,
        tree: Tree,
        directory: str,
        *,
        selection: str = "random",
        overlap: float = 0.3,
        agent_index: int = 0,
        agent_count: int = 1,
    ) -> None:
        self.tree = tree
        self.directory = directory
        self.pattern = "**"
        self.sizes: dict[str, int] | None = None
        self.not_remembered = 0
        # sai3-bench's path selection: the tree's directories are dealt to the agents in
        # turn (in level order); exclusive picks only in this agent's, partitioned 70 % of
        # the time, weighted (1 - partition_overlap) of the time, the rest anywhere
        self.own_share = {"random": 0.0, "exclusive": 1.0, "partitioned": 0.7}.get(
            selection, 1.0 - overlap
        )
        position = {d: i for i, d in enumerate(tree.directories)}
        self.own = [
            n
            for n, d in enumerate(tree.file_dirs)
            if position[d] % agent_count == agent_index % agent_count
        ]
        if not self.own:  # fewer directories than agents: sai3-bench falls back to any
            self.own_share = 0.0

    def pick(self, r: float) -> str | None:
        tree = self.tree
        if not tree.files:
            return None
        share = self.own_share
        if r < share:  # one uniform number does both: which half, then where in it
            x = int(r / share * len(self.own) * tree.per_dir)
            directory = self.own[x // tree.per_dir]
            return self.directory + tree.path(directory * tree.per_dir + x % tree.per_dir)
        r = (r - share) / (1.0 - share)
        return self.directory + tree.path(int(r * tree.files))

    def matches(self, name: str) -> bool:
        return False  # puts outside the tree never feed it

    def add(self, key: str, size: int = 0) -> None:
        pass  # the tree's own files are what it picks from

    def __len__(self) -> int:
        return self.tree.files


class TreePutKeys:
    """The files one worker's put created in the tree: the n-th goes to file directory
    n mod (their number), named ``<head><n>``; like ``PutKeys``, described by a counter."""

    def __init__(self, directory: str, tree: Tree, head: str, suffix: str = "") -> None:
        self.directory = directory
        self.tree = tree
        self.head = head
        self.suffix = suffix  # "/" for the directories a mkdir makes
        self.count = 0

    def _key(self, n: int) -> str:
        dirs = self.tree.file_dirs
        return f"{self.directory}{dirs[n % len(dirs)]}{self.head}{n:010d}{self.suffix}"

    def next_key(self) -> str:
        self.count += 1
        return self._key(self.count)

    def keys(self, start: int = 0, step: int = 1) -> Iterator[str]:
        return (self._key(n) for n in range(start + 1, self.count + 1, step))


def sample_paths(tree: Tree, rng: random.Random, count: int = 8) -> list[str]:
    """The first, the last and a few files in between (to check a pattern covers them)."""
    if not tree.files:
        return []
    picks = {0, tree.files - 1, *(rng.randrange(tree.files) for _ in range(count))}
    return [tree.path(i) for i in sorted(picks)]
