"""sai3-bench's directory trees: the layout its docs give (names, counts, where files go),
prepared, read, stat'ed and written into, then cleaned up, on real files."""

from __future__ import annotations

from pathlib import Path

import pytest

from trio_bench.config import ConfigError, parse_config
from trio_bench.engine import Engine
from trio_bench.engine._tree import Tree

from .test_engine import run_stages

BASIC = """
version: 1
duration: 300ms
concurrency: 4
target: "file://{root}"
prepare:
  directory_structure:
    width: 3
    depth: 2
    files_per_dir: 5
    distribution: "{distribution}"
    dir_mask: "d%d_w%d.dir"
  ensure_objects:
    - base_uri: "file://{root}"
      count: 0
      size_spec: {{type: uniform, min: 1024, max: 4096}}
      fill: random
  cleanup: {cleanup}
workload:
  - {{op: get, path: "/", weight: 50}}
  - {{op: put, path: "/", object_size: 2048, weight: 30}}
  - {{op: stat, path: "/", weight: 20}}
"""


def tree_config(root: Path, distribution: str = "bottom", cleanup: str = "false") -> object:
    return parse_config(BASIC.format(root=root, distribution=distribution, cleanup=cleanup))


def test_the_layout_is_sai3_benchs() -> None:
    cfg = tree_config(Path("/x"))
    shape = cfg.prepare.directory_structure
    tree = Tree(shape)
    # level by level, each directory's children numbered from 1 under it
    assert tree.directories[:4] == [
        "d1_w1.dir/",
        "d1_w2.dir/",
        "d1_w3.dir/",
        "d1_w1.dir/d2_w1.dir/",
    ]
    assert len(tree.directories) == 3 + 9 and tree.files == 45  # 9 leaves x 5
    assert tree.path(0) == "d1_w1.dir/d2_w1.dir/file_00000000.dat"
    assert tree.path(7) == "d1_w1.dir/d2_w2.dir/file_00000007.dat"
    assert tree.path(44) == "d1_w3.dir/d2_w3.dir/file_00000044.dat"
    every = Tree(tree_config(Path("/x"), "all").prepare.directory_structure)
    assert every.files == 12 * 5 and every.path(0) == "d1_w1.dir/file_00000000.dat"


@pytest.mark.parametrize("distribution", ["bottom", "all"])
async def test_a_tree_is_prepared_read_written_into_and_cleaned_up(
    tmp_path: Path, distribution: str
) -> None:
    root = tmp_path / "tree"
    engine = Engine(tree_config(root, distribution, cleanup="true"), run_tag="t")
    await engine.preflight()
    seen: dict[str, int] = {}

    def look() -> None:
        for path in root.rglob("*"):
            if path.is_file():
                seen[str(path.relative_to(root))] = path.stat().st_size

    summaries = await run_stages(engine, after_prepare=look)
    files = 45 if distribution == "bottom" else 60
    assert summaries["prepare"].ops["put"].ops == files and len(seen) == files
    assert all(1024 <= size <= 4096 for size in seen.values())
    if distribution == "bottom":
        assert all(name.count("/") == 2 for name in seen)  # only in the leaves
    ops = summaries["workload"].ops
    for kind in ("get", "stat", "put"):
        assert ops[kind].ops > 0 and ops[kind].errors == 0, summaries["workload"].error_samples
    assert summaries["cleanup"].ops["delete"].errors == 0
    assert not [p for p in root.rglob("*") if p.is_file()]  # the tree's files and the puts'


async def test_shared_agents_split_the_tree_and_a_second_prepare_writes_nothing(
    tmp_path: Path,
) -> None:
    root = tmp_path / "tree"
    text = BASIC.format(root=root, distribution="bottom", cleanup="false")
    cfg = parse_config(text + "distributed: {shared_filesystem: true}\n")
    for a in range(2):
        engine = Engine(cfg, agent_index=a, agent_count=2)
        await engine.preflight()
        run = engine.prepare_stage()
        await run.run(engine.clock.now_ns())
        assert run.summary("completed").ops["put"].ops in (22, 23)
    assert len([p for p in root.rglob("*") if p.is_file()]) == 45
    again = Engine(cfg, agent_index=0, agent_count=2)
    assert "23 of 23 prepared objects already exist" in await again.preflight()


@pytest.mark.parametrize(
    ("change", "line"),
    [
        (("count: 0", "count: 7"), "prepare.ensure_objects[0].count: the tree holds 45 files"),
        (('"d%d_w%d.dir"', '"d%d.dir"'), "prepare.directory_structure.dir_mask: 'd%d.dir' must"),
        (("width: 3", "width: 2000"), "prepare.directory_structure: 4,002,000 directories"),
        (
            ('distribution: "bottom"', 'distribution: "top"'),
            "prepare.directory_structure.distribution",
        ),
    ],
)
def test_tree_mistakes_are_one_line(change: tuple[str, str], line: str) -> None:
    text = BASIC.format(root="/x", distribution="bottom", cleanup="false")
    with pytest.raises(ConfigError) as caught:
        parse_config(text.replace(*change))
    assert any(got.startswith(line) for got in caught.value.lines), caught.value.lines


async def test_mkdir_makes_directories_rmdir_removes_them_and_cleanup_the_rest(
    tmp_path: Path,
) -> None:
    cfg = parse_config(
        f"""
target: file://{tmp_path}/
duration: 300ms
concurrency: 2
prepare: {{cleanup: true}}
workload:
  - {{op: mkdir, path: "test-dirs/", weight: 3}}
  - {{op: rmdir, path: "test-dirs/", weight: 1}}
"""
    )
    engine = Engine(cfg, prefix="a/", run_tag="t")
    await engine.preflight()
    left: list[str] = []

    async def run(name: str) -> object:
        stage = getattr(engine, f"{name}_stage")()
        await stage.run(engine.clock.now_ns())
        return stage.summary("completed")

    await run("prepare")
    await engine.after_prepare()
    workload = await run("workload")
    made, removed = workload.ops["mkdir"], workload.ops["rmdir"]
    assert made.ops > 10 and made.errors == 0 and removed.ops > 0
    assert removed.errors <= 2  # at most a take when none was made yet, per worker
    left = sorted(p.name for p in (tmp_path / "a" / "test-dirs").iterdir())
    assert len(left) == made.ops - removed.ops and all(p.startswith("dir-t-a0-w") for p in left)
    assert all((tmp_path / "a" / "test-dirs" / p).is_dir() for p in left)
    cleanup = await run("cleanup")
    assert cleanup.ops["delete"].errors == 0
    assert not any((tmp_path / "a" / "test-dirs").iterdir())


async def test_cleanup_after_the_fact_finds_the_directories_mkdir_made(tmp_path: Path) -> None:
    """A run whose cleanup did not happen (aborted, a second Ctrl-C): ``triobench cleanup``
    lists what the run made by its names -- the objects its puts wrote and the directories
    its mkdirs made -- and removes them, leaving what is not the run's."""
    cfg = parse_config(
        f"""
target: file://{tmp_path}/
duration: 300ms
concurrency: 2
workload:
  - {{op: mkdir, path: "test-dirs/", weight: 2}}
  - {{op: put, path: "new/obj-*", object_size: 1KiB, weight: 1}}
"""
    )
    engine = Engine(cfg, prefix="a/", run_tag="t")
    await engine.preflight()
    for name in ("prepare", "workload"):
        stage = getattr(engine, f"{name}_stage")()
        await stage.run(engine.clock.now_ns())
    engine.close()
    made = sorted(p.name for p in (tmp_path / "a" / "test-dirs").iterdir())
    assert len(made) > 5 and all((tmp_path / "a" / "test-dirs" / p).is_dir() for p in made)
    (tmp_path / "a" / "test-dirs" / "not-the-runs").mkdir()  # someone else's
    (tmp_path / "a" / "test-dirs" / "dir-other-a0-w0-0000000001").mkdir()  # another run's

    later = Engine(cfg, prefix="a/", run_tag="t")  # a new process: only the names to go by
    leftovers = await later.leftovers()
    assert sum(key.endswith("/") for key in leftovers) == len(made)
    stage = later.cleanup_stage(leftovers=leftovers, force=True)
    await stage.run(later.clock.now_ns())
    summary = stage.summary("completed")
    later.close()
    assert summary.ops["delete"].errors == 0 and summary.ops["delete"].ops == len(leftovers)
    assert sorted(p.name for p in (tmp_path / "a" / "test-dirs").iterdir()) == [
        "dir-other-a0-w0-0000000001",
        "not-the-runs",
    ]
    assert not any((tmp_path / "a" / "new").iterdir())


async def test_exclusive_path_selection_keeps_each_agent_in_its_directories(
    tmp_path: Path,
) -> None:
    root = tmp_path / "tree"
    text = BASIC.format(root=root, distribution="bottom", cleanup="false")
    text = text.replace('  - {op: put, path: "/", object_size: 2048, weight: 30}\n', "")
    cfg = parse_config(text + "distributed: {shared_storage: true, path_selection: exclusive}\n")
    from trio_bench.engine import AgentPlan

    picked: list[set[str]] = []
    for a in range(3):
        pool = AgentPlan(cfg, agent_index=a, agent_count=3).ops[0].pool
        assert pool is not None
        picked.append({pool.pick(i / 500).rpartition("/")[0] for i in range(500)})
    # 12 directories dealt in turn: the 9 leaves (positions 3-11) go 3 to each agent
    assert [len(dirs) for dirs in picked] == [3, 3, 3]
    assert not (picked[0] & picked[1]) and not (picked[1] & picked[2])
    weighted = parse_config(
        text
        + "distributed: {shared_storage: true, path_selection: weighted, partition_overlap: 1}\n"
    )
    pool = AgentPlan(weighted, agent_index=0, agent_count=3).ops[0].pool
    assert len({pool.pick(i / 500).rpartition("/")[0] for i in range(500)}) == 9  # any


async def test_a_pattern_into_the_tree_must_take_all_its_files(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    text = BASIC.format(root=root, distribution="bottom", cleanup="false")
    good = parse_config(
        text.replace('{op: get, path: "/", weight: 50}', '{op: get, path: "d*_w*.dir/**/*"}')
    )
    await Engine(good).preflight()  # matches every file
    bad = parse_config(
        text.replace('{op: get, path: "/", weight: 50}', '{op: get, path: "d1_w1.dir/**/*"}')
    )
    with pytest.raises(ConfigError) as caught:
        await Engine(bad).preflight()
    assert caught.value.lines[0].startswith(
        "workload[0].path: 'd1_w1.dir/**/*' does not take every file of the directory tree"
    )
