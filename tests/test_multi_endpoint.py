"""sai3-bench's multi_endpoint and per-agent overrides: several mount points (or S3
gateways) of one namespace, each worker keeping one; an agent's own concurrency, target and
endpoints."""

from __future__ import annotations

from pathlib import Path

import pytest

from trio_bench.config import (
    ConfigError,
    config_from_dict,
    config_to_dict,
    describe,
    for_agent,
    parse_config,
)
from trio_bench.engine import Engine
from trio_bench.engine._spread import SpreadBackend

from .test_engine import run_stages


def spread_config(a: Path, b: Path, extra: str = "") -> object:
    return parse_config(
        f"""
duration: 300ms
concurrency: 4
multi_endpoint:
  strategy: round_robin
  endpoints: ["file://{a}/", "file://{b}/"]
prepare:
  ensure_objects: [{{base_uri: data/, count: 40, object_size: 4KiB, use_multi_endpoint: true}}]
workload:
  - {{op: get, path: "data/*", weight: 3, use_multi_endpoint: true}}
  - {{op: put, path: "file://{a}/new/", object_size: 4KiB, use_multi_endpoint: true}}
{extra}"""
    )


async def test_workers_spread_over_mount_points_of_one_namespace(tmp_path: Path) -> None:
    real = tmp_path / "mnt1"
    real.mkdir()
    (tmp_path / "mnt2").symlink_to(real)  # a second way to reach the same files
    cfg = spread_config(real, tmp_path / "mnt2")
    assert cfg.target == f"file://{real}/"  # the first endpoint, as sai3-bench takes it
    assert cfg.workload[1].path == "new/"  # a URI under the target, made relative
    engine = Engine(cfg, prefix="a1/", agent_index=1, agent_count=2)
    backend = engine.backend
    assert isinstance(backend, SpreadBackend)
    # agent 1's workers start at endpoint (1 x 4 + w) mod 2: alternate, every one used
    bases = [backend.endpoint_of(w).base for w in range(4)]
    assert bases == [f"{real}/", f"{tmp_path / 'mnt2'}/"] * 2
    checks = await engine.preflight()
    assert sum("is a readable directory" in line for line in checks) == 2  # both checked
    summaries = await run_stages(engine)
    assert summaries["prepare"].ops["put"].ops == 40
    workload = summaries["workload"].ops
    assert workload["get"].ops > 0 and workload["get"].errors == 0
    assert len(list((real / "a1" / "data").iterdir())) == 40


def test_s3_gateways_of_one_bucket_become_the_runs_endpoints(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    cfg = parse_config(
        """
duration: 10s
multi_endpoint:
  endpoints: ["s3://10.9.0.17:80/bench/run/", "s3://10.9.0.18:80/bench/run/"]
workload: [{op: put, path: "put-data/", object_size: 1KiB, use_multi_endpoint: true}]
"""
    )
    assert cfg.target == "s3://bench/run/"
    engine = Engine(cfg)
    endpoints = [e.url for e in engine.backend.settings.endpoints]
    assert endpoints == ["http://10.9.0.17", "http://10.9.0.18"]


def test_an_agents_overrides_are_what_it_is_sent() -> None:
    cfg = parse_config(
        """
target: file:///mnt/a/
concurrency: 8
workload: [{op: get, path: "data/*", use_multi_endpoint: true}]
multi_endpoint: {endpoints: ["file:///mnt/a/", "file:///mnt/b/"]}
distributed:
  agents:
    - {address: "h1:7761", concurrency_override: 2}
    - address: "h2:7761"
      target_override: file:///mnt/c/
      multi_endpoint: {strategy: least_connections, endpoints: ["file:///mnt/c/", "file:///mnt/d/"]}
    - {address: "h3:7761"}
"""
    )
    shown = describe(cfg)
    assert "endpoints    2 (round_robin): file:///mnt/a/, file:///mnt/b/" in shown
    assert "?@h1:7761 [concurrency 2], ?@h2:7761 [target file:///mnt/c/, 2 endpoint(s)]" in shown
    one, two, three = (for_agent(cfg, f"h{i}:7761") for i in (1, 2, 3))
    assert (one.concurrency, one.target) == (2, "file:///mnt/a/")
    assert two.target == "file:///mnt/c/" and two.multi_endpoint is not None
    assert two.multi_endpoint.endpoints == ("file:///mnt/c/", "file:///mnt/d/")
    assert three is cfg
    assert config_from_dict(config_to_dict(two)) == two  # what the agent reads back


@pytest.mark.parametrize(
    ("endpoints", "message"),
    [
        (
            '["file:///mnt/a/", "s3://bucket/x/"]',
            "multi_endpoint.endpoints[1]: 's3://bucket/x/' is not a file:// endpoint",
        ),
        ('["file:///mnt/a/", "gs://b/"]', "multi_endpoint.endpoints[1]: gs:// (Google Cloud"),
        ('["file:///mnt/a/", "relative/"]', "multi_endpoint.endpoints[1]: unsupported scheme"),
    ],
)
def test_endpoint_mistakes_are_one_line_naming_the_endpoint(endpoints: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(
            f"multi_endpoint: {{endpoints: {endpoints}}}\n"
            "workload: [{op: get, path: 'data/*', use_multi_endpoint: true}]\n"
        )
    assert any(line.startswith(message) for line in caught.value.lines), caught.value.lines


def test_an_op_that_says_false_beside_ones_that_say_true_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(
            "target: file:///mnt/a/\nmulti_endpoint: {endpoints: ['file:///mnt/a/']}\n"
            "workload: [{op: get, path: 'd/*', use_multi_endpoint: true},"
            " {op: stat, path: 'd/*', use_multi_endpoint: false}]\n"
        )
    assert caught.value.lines[0].startswith("use_multi_endpoint: triobench spreads")


def test_weight_zero_is_an_op_switched_off() -> None:
    cfg = parse_config(
        "target: null://\nworkload: [{op: put, path: n/, object_size: 1, weight: 0},"
        " {op: get, path: 'd/*'}]\n"
    )
    from trio_bench.engine import AgentPlan

    assert [op.kind for op in AgentPlan(cfg).ops] == ["get"]
    with pytest.raises(ConfigError) as caught:
        parse_config("target: null://\nworkload: [{op: get, path: 'd/*', weight: 0}]\n")
    assert caught.value.lines == ["workload: every operation has weight 0; at least one must run"]
