"""The workload configuration: good configs, sai3-bench spellings, and every kind of mistake."""

from __future__ import annotations

import random
import statistics
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_bench.config import (
    ConfigError,
    SizeSpec,
    config_from_dict,
    config_to_dict,
    describe,
    load_config,
    parse_config,
    parse_duration,
    parse_size,
)

ROOT = Path(__file__).resolve().parent.parent

ISSUE_EXAMPLE = """
target: file:///tmp/triobench-data/
duration: 30s
concurrency: 8
prepare:
  ensure_objects:
    - base_uri: data/
      count: 10000
      size_spec: {type: lognormal, mean: 1MiB, std_dev: 256KiB, min: 4KiB, max: 4MiB}
      fill: random
  cleanup: true
workload:
  - {op: get,    path: "data/*",  weight: 60}
  - {op: put,    path: "new/",    weight: 25, object_size: 64KiB}
  - {op: stat,   path: "data/*",  weight: 10}
  - {op: list,   path: "data/",   weight: 3}
  - {op: delete, path: "new/*",   weight: 2}
distributed:
  agents: [{address: "127.0.0.1:7761", id: a1}, {address: "127.0.0.1:7762", id: a2}]
  shared_storage: false
"""

SAI3_STYLE = """
target: "file:///tmp/bench/"
duration: "5m"
concurrency: 32
prepare:
  prepare_strategy: sequential
  post_prepare_delay: 3
  ensure_objects:
    - base_uri: "file:///tmp/bench/data/"
      count: 5000
      min_size: 1048576
      max_size: 1048576
      fill: random
    - base_uri: "file:///tmp/bench/small/"
      count: 100
      size_spec: {uniform: {min: 1KB, max: 1MB}}
  cleanup: true
workload:
  - op: get
    path: "data/prepared-*.dat"
    weight: 60
  - op: put
    path: "data/new-"
    size_distribution:
      type: lognormal
      mean: 1048576
      std_dev: 524288
      min: 1024
      max: 10485760
    weight: 25
  - op: stat
    path: "data/prepared-*.dat"
    weight: 5
"""


def test_issue_example_parses_and_round_trips() -> None:
    config = parse_config(ISSUE_EXAMPLE)
    assert config.concurrency == 8
    assert config.duration == 30 * 10**9
    assert config.prepare.ensure_objects[0].size == SizeSpec(
        "lognormal", mean=2**20, std_dev=256 * 1024, min=4096, max=4 * 2**20
    )
    assert [op.op for op in config.workload] == ["get", "put", "stat", "list", "delete"]
    assert config.distributed.agents[1].host_port == ("127.0.0.1", 7762)
    assert config_from_dict(config_to_dict(config)) == config
    plan = describe(config)
    assert "60.0%  get    data/*" in plan and "64KiB" in plan


def test_sai3_bench_style_config() -> None:
    config = parse_config(SAI3_STYLE)
    data, small = config.prepare.ensure_objects
    assert data.size == SizeSpec("fixed", size=2**20)  # min_size == max_size
    assert data.base_uri == "file:///tmp/bench/data/"
    assert small.size == SizeSpec("uniform", min=1000, max=1_000_000)
    assert config.prepare.post_prepare_delay == 3 * 10**9
    assert config.prepare.prepare_strategy == "sequential"
    assert config.workload[1].size is not None and config.workload[1].size.kind == "lognormal"
    assert config_from_dict(config_to_dict(config)) == config


def test_examples_directory_configs_are_valid() -> None:
    files = sorted((ROOT / "examples").glob("*.yaml"))
    assert files, "examples/ has no configs"
    for path in files:
        load_config(path)


def errors_of(text: str, overrides: list[str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, overrides=overrides or [])
    return info.value.lines


def replaced(old: str, new: str) -> str:
    assert old in ISSUE_EXAMPLE
    return ISSUE_EXAMPLE.replace(old, new, 1)


@pytest.mark.parametrize(
    "text, line",
    [
        (
            replaced("op: get,", "op: gett,"),
            "workload[0].op: unknown operation 'gett' (did you mean 'get'?) (expected get, put, stat, list, delete, mkdir, rmdir)",
        ),
        (replaced("concurrency: 8", "concurrency: 0"), "concurrency: must be at least 1, got 0"),
        (
            replaced("concurrency: 8", "concurrency: '8'"),
            "concurrency: expected a whole number >= 1, got the string '8'",
        ),
        (
            replaced("duration: 30s", "duration: soon"),
            "duration: 'soon' is not a duration (seconds, or a number with a unit such as 500ms, 30s, 2m, 1h, 1m30s)",
        ),
        (
            replaced("object_size: 64KiB", "object_size: -5"),
            "workload[1].object_size: size must not be negative, got -5",
        ),
        (
            replaced("object_size: 64KiB", "object_size: 64XB"),
            "workload[1].object_size: '64XB' is not a size (bytes, or a number with a unit such as 4KiB, 1MiB, 1GB, 64k)",
        ),
        (replaced("concurrency: 8", "concurrency: 8\nthreads: 4"), "threads: unknown key"),
        (
            replaced("count: 10000", "count: 10000\n      colour: red"),
            "prepare.ensure_objects[0].colour: unknown key",
        ),
        (replaced("weight: 60", "weight: -1"), "workload[0].weight: must be a number >= 0, got -1"),
        (
            replaced('path: "data/*",  weight: 60', 'path: "../etc/*", weight: 60'),
            "workload[0].path: path '../etc/*' has an empty, '.' or '..' segment",
        ),
        (
            replaced('path: "data/*",  weight: 60', 'path: "/etc/*", weight: 60'),
            "workload[0].path: path '/etc/*' must be relative to the target (no leading /, no \\)",
        ),
        (
            replaced('path: "data/*",  weight: 60', 'path: "d%2e%2e/x", weight: 60'),
            "workload[0].path: path 'd%2e%2e/x' contains URL-encoded characters",
        ),
        (
            replaced("shared_storage: false", "shared_storage: maybe"),
            "distributed.shared_storage: expected true or false, got the string 'maybe'",
        ),
        (
            replaced("target: file:///tmp/triobench-data/", "target: ftp://x/"),
            "target: unsupported scheme in 'ftp://x/' (expected file://, direct://, null://, s3://)",
        ),
        (
            replaced("object_size: 64KiB", "object_size: 64KiB, size_spec: 1KiB"),
            "workload[1]: give one size: object_size or size_spec, not both",
        ),
        (
            replaced(
                '{op: get,    path: "data/*",  weight: 60}',
                '{op: get, path: "data/*", object_size: 4k}',
            ),
            "workload[0]: get does not take a size (only put writes objects)",
        ),
        (
            replaced(", object_size: 64KiB", ""),
            "workload[1]: put needs a size (object_size, size_spec or size_distribution)",
        ),
        (
            replaced("std_dev: 256KiB", "std_dev: 256KiB, skew: 2"),
            "prepare.ensure_objects[0].size_spec: lognormal size distribution does not take skew",
        ),
        (
            replaced(
                "{type: lognormal, mean: 1MiB, std_dev: 256KiB, min: 4KiB, max: 4MiB}",
                "{type: zipf}",
            ),
            "prepare.ensure_objects[0].size_spec: unknown size distribution 'zipf' (expected fixed, uniform, lognormal)",
        ),
        (
            replaced('path: "data/*",  weight: 60', 'path: "*/x", weight: 60'),
            "workload[0].path: path '*/x': wildcards are only supported in the last path segment",
        ),
        (
            replaced('{address: "127.0.0.1:7762", id: a2}', '{address: "127.0.0.1:x", id: a1}'),
            "distributed.agents[1].address: '127.0.0.1:x' is not HOST:PORT",
        ),
        (
            replaced('{address: "127.0.0.1:7762", id: a2}', '{address: "h:65535", processes: 2}'),
            "distributed.agents[1].processes: 2 ports from 65535 go past 65535",
        ),
        (
            replaced('{address: "127.0.0.1:7762", id: a2}', '{address: "h:7000", processes: 0}'),
            "distributed.agents[1].processes: must be 1 to 256",
        ),
        (
            replaced(
                '{address: "127.0.0.1:7762", id: a2}', '{address: "127.0.0.1:7760", processes: 2}'
            ),
            "distributed.agents: an address is listed twice",
        ),
        (
            replaced("shared_storage: false", "shared_storage: false\n  warn_after: 30s"),
            "distributed: need ping_interval < warn_after < dead_after, got 1s, 30s, 15s",
        ),
        (
            replaced("base_uri: data/", "base_uri: file:///elsewhere/data/"),
            "prepare.ensure_objects[0].base_uri: 'file:///elsewhere/data/' is not under the target 'file:///tmp/triobench-data/'",
        ),
        (
            "target: [",
            # libyaml's wording (PyYAML's C loader, used where installed)
            "config:2:1: invalid YAML: did not find expected node content",
        ),
        ("- a\n- b", "config: expected a map of settings, got a list"),
        ("target: null://\n", "workload: required field missing"),
    ],
)
def test_each_mistake_is_one_line_naming_the_field(text: str, line: str) -> None:
    lines = errors_of(text)
    assert line in lines
    assert all("\n" not in entry for entry in lines)


def test_several_mistakes_are_all_reported() -> None:
    text = replaced("op: get,", "op: gett,").replace("concurrency: 8", "concurrency: -2")
    lines = errors_of(text)
    assert any(entry.startswith("workload[0].op") for entry in lines)
    assert any(entry.startswith("concurrency") for entry in lines)


def test_load_config_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    path = tmp_path / "bad.yaml"
    path.write_text("target: null://\nworkload: [\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+:\d+: invalid YAML"):
        load_config(path)
    good = tmp_path / "mine.yaml"
    good.write_text("target: null://\nworkload: [{op: list, path: x/}]\n")
    assert load_config(good).name == "mine"


@pytest.mark.parametrize(
    "text, size",
    [
        (4096, 4096),
        ("4k", 4096),
        ("4KiB", 4096),
        ("4KB", 4000),
        ("1MiB", 2**20),
        ("1.5MiB", 3 * 2**19),
        ("2GB", 2 * 10**9),
        ("0", 0),
        ("1 GiB", 2**30),
    ],
)
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    "text, ns",
    [
        (30, 30 * 10**9),
        (0.5, 5 * 10**8),
        ("500ms", 5 * 10**8),
        ("30s", 30 * 10**9),
        ("2m", 120 * 10**9),
        ("1h", 3600 * 10**9),
        ("250us", 250_000),
        ("10", 10 * 10**9),
    ],
)
def test_durations(text: object, ns: int) -> None:
    assert parse_duration(text) == ns


@given(st.integers(1, 10**6), st.integers(0, 10**6))
def test_uniform_sizes_stay_in_bounds(low: int, span: int) -> None:
    spec = SizeSpec("uniform", min=low, max=low + span)
    rng = random.Random(low)
    assert all(low <= spec.sample(rng) <= low + span for _ in range(50))


def test_lognormal_sizes_have_the_requested_mean_and_spread() -> None:
    spec = SizeSpec("lognormal", mean=2**20, std_dev=256 * 1024, min=4096, max=16 * 2**20)
    rng = random.Random(7)
    sizes = [spec.sample(rng) for _ in range(20_000)]
    assert all(4096 <= s <= 16 * 2**20 for s in sizes)
    assert statistics.fmean(sizes) == pytest.approx(2**20, rel=0.02)
    assert statistics.pstdev(sizes) == pytest.approx(256 * 1024, rel=0.05)
    assert statistics.median(sizes) < statistics.fmean(sizes)  # right-skewed


def test_lognormal_is_clamped_to_its_bounds() -> None:
    spec = SizeSpec("lognormal", mean=10_000, std_dev=50_000, min=9_000, max=11_000)
    rng = random.Random(1)
    assert all(9_000 <= spec.sample(rng) <= 11_000 for _ in range(2000))


def test_agents_with_several_processes_are_one_entry_each() -> None:
    config = parse_config(
        "target: null://\nworkload: [{op: list, path: x/}]\ndistributed:\n  agents:\n"
        '    - {address: "10.0.0.5:7761", id: h5, processes: 3}\n'
        '    - {address: "[::1]:9000", processes: 2}\n'
        '    - {address: "10.0.0.6:7761"}\n'
    )
    assert [(a.address, a.id) for a in config.distributed.agents] == [
        ("10.0.0.5:7761", "h5-1"),
        ("10.0.0.5:7762", "h5-2"),
        ("10.0.0.5:7763", "h5-3"),
        ("[::1]:9000", None),
        ("[::1]:9001", None),
        ("10.0.0.6:7761", None),
    ]
    # what travels in CONFIGURE and lands in config.yaml reads back the same
    assert config_from_dict(config_to_dict(config)) == config


def readme_configs() -> list[str]:
    """The README's whole configurations (its other yaml blocks are excerpts)."""
    import re

    blocks = re.findall(r"```yaml\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return [block for block in blocks if block.startswith("target:")]


def test_the_readme_ssh_excerpt_is_valid() -> None:
    import re

    blocks = re.findall(r"```yaml\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    (excerpt,) = [block for block in blocks if "ssh:" in block and not block.startswith("target:")]
    config = parse_config("target: null://\nworkload: [{op: list, path: x/}]\n" + excerpt)
    assert len(config.distributed.ssh_agents) == 17
    assert config.distributed.ssh_agents[15].ssh == "ubuntu@lg16"
    assert config.distributed.ssh.options == ("-o", "ProxyJump=bastion")


def test_the_readme_configuration_reference_is_valid() -> None:

    (block,) = readme_configs()
    config = parse_config(block)
    assert any(op.block_size for op in config.workload)  # the reference shows every field
    assert config.s3.ca_bundle and config.file.buffer_size


def test_compound_durations_and_near_misses() -> None:
    cfg = parse_config("target: null://\nduration: 1m30s\nworkload: [{op: list, path: x/}]\n")
    assert cfg.duration == 90 * 10**9
    lines = errors_of(
        "target: null://\nduraton: 2s\n"
        "workload: [{op: delte, path: 'x/*'}, {op: put, path: x/, objectsize: 1}]\n"
    )
    assert sorted(lines) == [
        "duraton: unknown key (did you mean 'duration'?)",
        "workload[0].op: unknown operation 'delte' (did you mean 'delete'?) "
        "(expected get, put, stat, list, delete, mkdir, rmdir)",
        "workload[1].objectsize: unknown key (did you mean 'object_size'?)",
    ]


def test_command_line_overrides_are_validated_like_the_file() -> None:
    text = (
        "target: null://\nworkload: [{op: get, path: 'x/*'}, {op: put, path: x/, object_size: 1}]\n"
    )
    cfg = parse_config(
        text,
        overrides=[
            "duration=1m30s",
            "concurrency=4",
            "workload[1].weight=5",
            "distributed.dead_after=20s",
            "io_rate.iops=100",
        ],
    )
    assert (cfg.duration, cfg.concurrency, cfg.workload[1].weight) == (90 * 10**9, 4, 5.0)
    assert cfg.distributed.dead_after == 20 * 10**9 and cfg.io_rate.iops == 100
    for bad, line in [
        ("x", "--set 'x': expected KEY.PATH=VALUE, e.g. duration=30s"),
        ("workload[7].weight=1", "--set 'workload[7].weight=1': there is no entry 7 there"),
        ("concurrencyy=3", "concurrencyy: unknown key (did you mean 'concurrency'?)"),
        ("concurrency=-3", "concurrency: must be at least 1, got -3"),
    ]:
        assert errors_of(text, overrides=[bad]) == [line]


def test_the_plan_shows_the_s3_section() -> None:
    from trio_bench.config import describe

    cfg = parse_config(
        "target: s3://bucket/run/\nworkload: [{op: get, path: 'x/*'}]\n"
        "s3: {endpoint: 'http://gw:9000', region: eu-1, part_size: 8MiB, verify_tls: false}\n"
    )
    plan = describe(cfg)
    assert "s3           endpoint http://gw:9000; region eu-1; path addressing" in plan
    assert "multipart above 64MiB in parts of 8MiB; payload unsigned; TLS NOT verified" in plan


def _round_trips_as_written(config) -> str:
    import yaml

    text = yaml.safe_dump(config_to_dict(config, human=True), sort_keys=False)
    assert parse_config(text) == config, text
    return text


def test_config_as_run_reads_back_equal_in_human_units() -> None:
    """config.yaml as run: every example and the README reference read back to the same
    config, written with units people use (no nanosecond strings, no raw byte counts)."""
    import re

    sources = [path.read_text() for path in sorted((ROOT / "examples").glob("*.yaml"))]
    sources += readme_configs()
    for source in sources:
        text = _round_trips_as_written(parse_config(source))
        assert not re.search(r"\d+ns\b", text), text
        assert "size_spec: 4096" not in text and "1048576" not in text


@given(
    st.integers(1, 10**14),
    st.integers(1, 2**40),
    st.integers(1, 2**20),
    st.floats(0.001, 1000, allow_nan=False),
)
def test_any_duration_size_and_weight_reads_back_exactly(
    duration: int, size: int, block: int, weight: float
) -> None:
    cfg = parse_config(
        f"target: file:///tmp/x/\nduration: {duration}ns\n"
        f"workload: [{{op: put, path: n/, object_size: {size}, weight: {weight!r}}},"
        f" {{op: get, path: 'n/*', block_size: {block}}}]\n"
        f"distributed: {{stats_interval: {min(max(duration, 10**7) // 10**6, 3_600_000)}ms}}\n"
    )
    _round_trips_as_written(cfg)


def test_host_ranges_and_ssh_destinations() -> None:
    from trio_bench.config import expand_hosts, parse_destination

    assert expand_hosts("lg{1...3}") == ["lg1", "lg2", "lg3"]
    assert expand_hosts("n{08...10}.lab") == ["n08.lab", "n09.lab", "n10.lab"]
    assert expand_hosts("r{1...2}n{1...2}") == ["r1n1", "r1n2", "r2n1", "r2n2"]
    with pytest.raises(ValueError, match="backwards"):
        expand_hosts("lg{3...1}")
    with pytest.raises(ValueError, match="more than 10,000"):
        expand_hosts("lg{1...20000}")
    assert parse_destination("lg1") == (None, "lg1", None)
    assert parse_destination("ubuntu@lg1") == ("ubuntu", "lg1", None)
    assert parse_destination("ssh://ubuntu@lg1:2222") == ("ubuntu", "lg1", 2222)
    assert parse_destination("ssh://[fd00::5]:22") == (None, "fd00::5", 22)
    for bad in ("-oProxyCommand=x", "u@", "a b", "ssh://h:99999"):
        with pytest.raises(ValueError, match="not an SSH destination"):
            parse_destination(bad)


def test_ssh_agents_read_back_from_config_as_run_and_errors_name_the_entry() -> None:
    import yaml

    config = parse_config(
        "target: null://\nworkload: [{op: list, path: x/}]\n"
        "distributed: {agents: [{ssh: 'u@lg{1...2}', processes: 4, id: lg}, "
        "{address: '10.0.0.1:7761'}], ssh: {key: k, timeout: 1m}}\n"
    )
    assert [a.ssh for a in config.distributed.ssh_agents] == ["u@lg1", "u@lg2"]
    text = yaml.safe_dump(config_to_dict(config, human=True))
    assert parse_config(text) == config and "1m" in text
    lines = errors_of(
        "target: null://\nworkload: [{op: list, path: x/}]\n"
        "distributed: {agents: [{ssh: '-oProxyCommand=evil'}, {ssh: h, processes: 0}], "
        "ssh: {port: 70000}}\n"
    )
    assert any("ssh 0].ssh" in line and "not an SSH destination" in line for line in lines)
    assert any("ssh 1].processes" in line for line in lines)
    assert "distributed.ssh.port: must be 1 to 65535" in lines


def test_sai3_bench_rate_spellings() -> None:
    base = "target: null://\nworkload: [{op: list, path: x/}]\n"
    assert parse_config(base + "io_rate: {iops: max}\n").io_rate is None  # the closed loop
    assert parse_config(base + "io_rate: max\n").io_rate is None
    rate = parse_config(base + "io_rate: {iops: 50, distribution: deterministic}\n").io_rate
    assert rate is not None and (rate.iops, rate.distribution) == (50, "fixed")


SAI3_PLAIN = """
version: 1
target: file:///tmp/x/
enable_metadata_cache: false
warmup_period: 3s
perf_log: {enabled: true, interval: 2s}
prepare:
  cleanup_mode: tolerant
  force_overwrite: true
  ensure_objects: [{base_uri: data/, count: 0, object_size: 1KiB}]
workload: [{op: get, path: data/, weight: 1, concurrency: 4}]
"""


def test_sai3_benchs_plain_keys_are_taken_or_set_aside_with_a_reason() -> None:
    cfg = parse_config(SAI3_PLAIN)
    assert cfg.warmup == 3_000_000_000
    assert cfg.distributed.stats_interval == 2_000_000_000  # perf_log's interval
    assert cfg.prepare.force_overwrite and cfg.workload[0].concurrency == 4
    shown = describe(cfg)
    for key in ("version", "enable_metadata_cache", "perf_log", "prepare.cleanup_mode"):
        assert f"set aside    {key}: " in shown
    assert "writes every object, existing or not (force_overwrite)" in shown
    wire = config_to_dict(cfg)
    assert not {"version", "perf_log", "enable_metadata_cache"} & set(wire)
    assert config_from_dict(wire) == cfg and config_from_dict(wire).notes == ()


@pytest.mark.parametrize(
    ("change", "line"),
    [
        (("version: 1", "version: 2"), "version: sai3-bench's config format version is 1"),
        (
            ("cleanup_mode: tolerant", "cleanup_mode: strict"),
            "prepare.cleanup_mode: 'strict' is not implemented",
        ),
        (
            ("warmup_period: 3s", "warmup_period: 3s\nwarmup: 1s"),
            "warmup_period: give warmup or warmup_period, not both",
        ),
        (
            ("interval: 2s}", "interval: 2s}\ndistributed: {stats_interval: 1s}"),
            "perf_log.interval: differs from distributed.stats_interval",
        ),
        (("{enabled: true, interval: 2s}", "{every: 2s}"), "perf_log.every: unknown key"),
        (("count: 0", "count: -1"), "prepare.ensure_objects[0].count: must be at least 0"),
        (("concurrency: 4", "concurrency: 0"), "workload[0].concurrency: must be at least 1"),
    ],
)
def test_sai3_key_mistakes_are_one_line(change: tuple[str, str], line: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(SAI3_PLAIN.replace(*change))
    assert any(got.startswith(line) for got in caught.value.lines), caught.value.lines


SAI3_DISTRIBUTED = """
target: file:///tmp/x/
duration: 10s
workload: [{op: get, path: "data/*"}]
distributed:
  shared_filesystem: true
  path_selection: random
  tree_creation_mode: concurrent
  grpc_keepalive_interval: 30
  deployment: {deploy_type: docker, image: "sai3bench:v0.6.11"}
  barrier_sync: {enabled: true, prepare: {type: all_or_nothing}}
  ssh: {enabled: true, user: bench, key_path: ~/.ssh/k}
  agents:
    - {address: "h1:7761", env: {RUST_LOG: info}, listen_port: 7761}
  stages:
    - {name: preflight, order: 1, completion: validation_passed, type: validation}
    - name: run
      order: 2
      completion: duration
      barrier: {type: all_or_nothing}
      config: {type: execute, duration: 30s}
"""


def test_sai3_benchs_distributed_keys_map_onto_triobenchs_lifecycle() -> None:
    cfg = parse_config(SAI3_DISTRIBUTED)
    assert cfg.distributed.shared_storage and cfg.distributed.ssh.key == "~/.ssh/k"
    assert cfg.duration == 30_000_000_000  # the execute stage's duration is the run's
    shown = describe(cfg)
    assert cfg.distributed.path_selection == "random"
    for key in (
        "distributed.tree_creation_mode",
        "distributed.grpc_keepalive_interval",
        "distributed.deployment: triobench starts no containers",
        "distributed.barrier_sync",
        "distributed.stages: validation, execute",
        "distributed.agents[].env",
        "distributed.agents[].listen_port",
        "duration: the execute stage's (30s) is the run's",
    ):
        assert f"set aside    {key}" in shown, key


@pytest.mark.parametrize(
    ("change", "line"),
    [
        (
            ("path_selection: random", "path_selection: sideways"),
            "distributed.path_selection: unknown path_selection 'sideways'",
        ),
        (
            ("prepare: {type: all_or_nothing}", "prepare: {type: quorum}"),
            "distributed.barrier_sync.prepare.type: 'quorum' barriers are not implemented",
        ),
        (
            ("type: validation}", "type: custom}"),
            "distributed.stages[0].type: a 'custom' stage is not supported",
        ),
        (("order: 1,", "order: 3,"), "distributed.stages[0]: a validation stage after execute"),
        (
            ("  shared_filesystem: true", "  shared_filesystem: true\n  shared_storage: false"),
            "distributed.shared_filesystem: differs from shared_storage",
        ),
    ],
)
def test_sai3_distributed_mistakes_are_one_line(change: tuple[str, str], line: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(SAI3_DISTRIBUTED.replace(*change))
    assert any(got.startswith(line) for got in caught.value.lines), caught.value.lines


def test_more_sai3_spellings_are_understood() -> None:
    cfg = parse_config(
        """
target: file:///tmp/x/
duration: 0s
force_overwrite: true
cleanup: {enabled: false}
s3dlio_optimization: {gcs_rapid_mode: true}
prepare:
  ensure_objects: [{base_uri: d/, count: 3, size_spec: {type: lognormal, mean: 1MiB, std_dev: 64KiB}}]
workload: [{op: put, path: "", object_size: 1KiB}]
distributed:
  barrier_sync: {cleanup: {type: best_effort}}
"""
    )
    assert cfg.duration == 0 and cfg.prepare.force_overwrite and not cfg.prepare.cleanup
    size = cfg.prepare.ensure_objects[0].size
    assert (size.min, size.max) == (1, 1024**4)  # bounds are optional in sai3-bench
    assert "set aside    s3dlio_optimization" in describe(cfg)
    with pytest.raises(ConfigError) as caught:
        parse_config(
            "target: null://\ncleanup: {paths: [data/]}\nworkload: [{op: get, path: 'a/*'}]\n"
        )
    assert caught.value.lines[0].startswith("cleanup: only {enabled: true|false} is supported")
