"""sai3-bench's dialect: its keys and spellings mapped onto triobench's config before it is
structured. What needs no work here becomes a note (``validate`` shows it as "set aside"),
what asks for something triobench does not do is refused, one line each; the rest is
rewritten into triobench's own keys (``from_sai3``)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from ._model import _SIZE_KEYS, _yaml_type, s3_endpoint_form
from ._units import parse_duration, show


def from_sai3(raw: Mapping[str, Any]) -> tuple[dict[str, Any], list[str], list[str]]:
    """A raw config (already a map) in triobench's own keys: (the config, notes saying
    what became of each sai3-bench key, mistakes)."""
    out, notes, mistakes = _set_aside(raw)
    if "target" not in out:
        derived = _target_from_endpoints(out)
        if derived:  # no target but endpoints: every op goes over them unless it says not
            out = {**_spread_by_default(out), "target": derived}
    rate = out.get("io_rate")
    if rate == "max" or (isinstance(rate, Mapping) and rate.get("iops") == "max"):
        # sai3-bench's "as fast as possible": no pacing at all (the closed loop)
        out = {k: v for k, v in out.items() if k != "io_rate"}
    return out, notes, mistakes


def _spread_by_default(raw: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(raw)

    def spread(entries: Any) -> Any:
        if not isinstance(entries, list):
            return entries
        return [{"use_multi_endpoint": True, **e} if isinstance(e, Mapping) else e for e in entries]

    if "workload" in out:
        out["workload"] = spread(out["workload"])
    prepare = out.get("prepare")
    if isinstance(prepare, Mapping) and "ensure_objects" in prepare:
        out["prepare"] = {**prepare, "ensure_objects": spread(prepare["ensure_objects"])}
    return out


def _target_from_endpoints(raw: Mapping[str, Any]) -> str | None:
    """sai3-bench's multi-endpoint configs name no target: the first endpoint (global, else
    the first agent's) is it (``s3://HOST:PORT/bucket/p/`` gives ``s3://bucket/p/``)."""
    lists = [raw.get("multi_endpoint")]
    distributed = raw.get("distributed")
    if isinstance(distributed, Mapping) and isinstance(distributed.get("agents"), list):
        lists += [a.get("multi_endpoint") for a in distributed["agents"] if isinstance(a, Mapping)]
    for spread in lists:
        if isinstance(spread, Mapping) and isinstance(spread.get("endpoints"), list):
            first = spread["endpoints"][0] if spread["endpoints"] else None
            if isinstance(first, str):
                gateway = s3_endpoint_form(first)
                return gateway[1] if gateway else first
    return None


_NOT_SUPPORTED = {
    "autotune": "sai3-bench's automatic tuning is not supported; run with fixed settings",
    "processes": "worker processes per agent are not a config key here: start agents with "
    "`triobench agent --processes N` (or `triobench run --agents N`)",
}
_TREE_FILE_KEYS = ("file_size", "fill", "dedup_factor", "compress_factor")


def _tree_file_keys(prepare: Mapping[str, Any]) -> dict[str, Any]:
    """sai3-bench's older spelling: the tree's files' ``file_size`` ({dist, min, max}),
    ``fill`` and factors at prepare level; they go to the ensure_objects entries that do
    not say (a size given there wins)."""
    prepare = dict(prepare)
    moved = {k: prepare.pop(k) for k in _TREE_FILE_KEYS if k in prepare}
    if isinstance(moved.get("file_size"), Mapping):
        spec = dict(moved.pop("file_size"))
        if "dist" in spec:
            spec["type"] = spec.pop("dist")
        moved["size_spec"] = spec
    elif "file_size" in moved:
        moved["object_size"] = moved.pop("file_size")
    entries = prepare.get("ensure_objects")
    if isinstance(entries, list):
        sized = (*_SIZE_KEYS, "size_spec", "object_size")
        prepare["ensure_objects"] = [
            {
                **{
                    k: v
                    for k, v in moved.items()
                    if not (k in ("size_spec", "object_size") and any(s in e for s in sized))
                },
                **e,
            }
            if isinstance(e, Mapping)
            else e
            for e in entries
        ]
    return prepare


def _set_aside_key(
    section: dict[str, Any],
    key: str,
    where: str,
    problem: Callable[[Any], str],
    why: str,
    notes: list[str],
    mistakes: list[str],
) -> None:
    """Take ``key`` out of ``section``: a note saying why it needs nothing here, and a
    mistake if its value is not one sai3-bench allows (``problem`` says what is wrong)."""
    wrong = problem(section.pop(key))
    if wrong:
        mistakes.append(f"{where}{key}: {wrong}")
    notes.append(f"{where}{key}: {why}")


def _set_aside(raw: Mapping[str, Any]) -> tuple[dict[str, Any], list[str], list[str]]:
    """sai3-bench keys that need no work here, or map onto ours: (the config without them,
    notes saying what became of each, mistakes)."""
    out = dict(raw)
    notes: list[str] = []
    mistakes: list[str] = []
    if "version" in out:
        if out.pop("version") != 1:
            mistakes.append("version: sai3-bench's config format version is 1")
        else:
            notes.append("version: sai3-bench's config format version (1): nothing to do")
    if "enable_metadata_cache" in out:
        _set_aside_key(
            out,
            "enable_metadata_cache",
            "",
            lambda v: "" if type(v) is bool else "expected true or false",
            "sai3-bench's agent-side cache of object lists; triobench keeps none (it lists "
            "each directory once per stage)",
            notes,
            mistakes,
        )
    for key, why in _NOT_SUPPORTED.items():
        if key in out:
            out.pop(key)
            mistakes.append(f"{key}: {why}")
    if "s3dlio_optimization" in out:
        _set_aside_key(
            out,
            "s3dlio_optimization",
            "",
            lambda _v: "",
            "tuning of sai3-bench's storage library; triobench has its own S3 client",
            notes,
            mistakes,
        )
    for key in ("force_overwrite", "skip_verification"):  # also spelled at the top
        if key in out:
            out["prepare"] = {key: out.pop(key), **(out.get("prepare") or {})}
    if isinstance(out.get("cleanup"), Mapping):  # sai3-bench's {enabled: false}
        section = dict(out.pop("cleanup"))
        if set(section) - {"enabled"} or type(section.get("enabled", True)) is not bool:
            mistakes.append(
                "cleanup: only {enabled: true|false} is supported (prepare.cleanup); "
                "cleanup removes what the run created"
            )
        else:
            enabled = section.get("enabled", True)
            out["prepare"] = {"cleanup": enabled, **(out.get("prepare") or {})}
    if "warmup_period" in out:  # sai3-bench's older name
        if "warmup" in out:
            mistakes.append("warmup_period: give warmup or warmup_period, not both")
        out["warmup"] = out.pop("warmup_period")
    if "perf_log" in out:
        mistakes += _perf_log(out, notes)
    if isinstance(out.get("distributed"), Mapping):
        mistakes += _sai3_distributed(out, notes)
    prepare = out.get("prepare")
    if isinstance(prepare, Mapping) and any(k in prepare for k in _TREE_FILE_KEYS):
        out["prepare"] = prepare = _tree_file_keys(prepare)
    if isinstance(prepare, Mapping) and "cleanup_mode" in prepare:
        prepare = dict(prepare)
        mode = prepare.pop("cleanup_mode")
        out["prepare"] = prepare
        if mode == "tolerant":
            notes.append(
                "prepare.cleanup_mode: tolerant is how triobench's cleanup works (an object "
                "already gone counts as done; other failures are errors)"
            )
        else:
            mistakes.append(
                f"prepare.cleanup_mode: {show(mode)} is not implemented (tolerant is how "
                "triobench's cleanup works)"
            )
    return out, notes, mistakes


_STAGE_TYPES = ("validation", "prepare", "execute", "cleanup")  # triobench's, in its order
_SET_ASIDE_DISTRIBUTED = {
    "grpc_keepalive_interval": "gRPC keepalives: triobench's liveness is ping_interval, "
    "warn_after and dead_after",
    "grpc_keepalive_timeout": "gRPC keepalives: triobench's liveness is ping_interval, "
    "warn_after and dead_after",
    "agent_ready_timeout": "triobench waits connect_timeout for agents and "
    "configure_timeout for their preflight",
    "path_template": "an agent's own prefix is always <agent id>/ (without shared_storage)",
}


def _sai3_distributed(out: dict[str, Any], notes: list[str]) -> list[str]:
    """sai3-bench's distributed keys: those that name what triobench does anyway become
    notes; those that ask for something it does not do are refused, one line each."""
    dist = dict(out["distributed"])
    out["distributed"] = dist
    mistakes: list[str] = []
    if "shared_filesystem" in dist:
        shared = dist.pop("shared_filesystem")
        if type(shared) is not bool:
            mistakes.append("distributed.shared_filesystem: expected true or false")
        elif dist.get("shared_storage", shared) != shared:
            mistakes.append("distributed.shared_filesystem: differs from shared_storage (one key)")
        else:
            dist["shared_storage"] = shared
    if "tree_creation_mode" in dist:
        _set_aside_key(
            dist,
            "tree_creation_mode",
            "distributed.",
            lambda v: (
                ""
                if v in ("isolated", "coordinator", "concurrent")
                else f"unknown mode {show(v)} (expected isolated, coordinator, concurrent)"
            ),
            "directories are made by the agent that writes there first (mkdir is "
            "idempotent), so every mode ends with the same tree",
            notes,
            mistakes,
        )
    for key, why in _SET_ASIDE_DISTRIBUTED.items():
        if key in dist:
            dist.pop(key)
            notes.append(f"distributed.{key}: {why}")
    if "barrier_sync" in dist:
        mistakes += _barriers(dist.pop("barrier_sync"), "distributed.barrier_sync")
        notes.append(
            "distributed.barrier_sync: every stage starts once every live agent is ready for "
            "it (all_or_nothing, majority too: with failure_policy: continue a failed agent "
            "is dropped and the others go on); stalls and losses follow warn_after, "
            "dead_after, give_up_after"
        )
    if "stages" in dist:
        mistakes += _stages(dist.pop("stages"), out, notes)
    if "deployment" in dist:
        dist.pop("deployment")
        notes.append(
            "distributed.deployment: triobench starts no containers; the agents at the listed "
            "addresses must be running (`triobench agent`), or give them as {ssh: user@host}"
        )
    ssh = dist.get("ssh")
    if isinstance(ssh, Mapping):
        ssh = dict(ssh)
        dist["ssh"] = ssh
        if "key_path" in ssh:  # sai3-bench's name
            ssh["key"] = ssh.pop("key_path")
        if ssh.pop("enabled", True) is False:
            notes.append("distributed.ssh.enabled: false: SSH is used for {ssh: ...} agents only")
    agents = dist.get("agents")
    if isinstance(agents, list):
        dist["agents"] = [_set_aside_agent(a, notes) for a in agents]
    return mistakes


AGENT_PORT = 7761  # `triobench agent`'s default


def _set_aside_agent(agent: Any, notes: list[str]) -> Any:
    if not isinstance(agent, Mapping) or "ssh" in agent:
        return agent
    agent = dict(agent)
    address = agent.get("address")
    if isinstance(address, str) and re.fullmatch(r"[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\]", address):
        agent["address"] = f"{address}:{AGENT_PORT}"  # a host alone: the agent's default port
    for key, why in (
        ("env", "environment for the agent process: set it where the agent is started"),
        ("listen_port", "the port the agent listens on is the one in its address"),
        ("volumes", "container volumes: triobench starts no containers"),
    ):
        if key in agent:
            agent.pop(key)
            note = f"distributed.agents[].{key}: {why}"
            if note not in notes:
                notes.append(note)
    return agent


def _barriers(section: Any, where: str, cleanup: bool = False) -> list[str]:
    """A barrier section, at any depth: all_or_nothing barriers are what happens; so is
    best_effort for cleanup (each agent cleans up what it made, failures or not), and
    majority is read as all_or_nothing (said in the note): every stage starts with every
    live agent, and failure_policy: continue drops a failed one and goes on."""
    if isinstance(section, Mapping):
        kind = section.get("type")
        if kind == "best_effort" and (cleanup or where.endswith(".cleanup")):
            kind = None
        if kind is not None and kind not in ("all_or_nothing", "majority"):
            return [
                f"{where}.type: {show(kind)} barriers are not implemented (all_or_nothing, "
                "majority read as all_or_nothing)"
            ]
        lines = []
        for key, value in section.items():
            lines += _barriers(value, f"{where}.{key}")
        return lines
    return []


def _stages(stages: Any, out: dict[str, Any], notes: list[str]) -> list[str]:
    """sai3-bench's stage list must be triobench's lifecycle: validation, prepare, execute,
    cleanup, in that order (any may be left out); an execute stage's duration is the run's."""
    if not isinstance(stages, list):
        return ["distributed.stages: expected a list of stages"]
    mistakes: list[str] = []
    kinds: list[str] = []
    ordered = sorted(
        enumerate(stages),
        key=lambda item: item[1].get("order", item[0]) if isinstance(item[1], Mapping) else 0,
    )
    for i, stage in ordered:
        where = f"distributed.stages[{i}]"
        if not isinstance(stage, Mapping):
            mistakes.append(f"{where}: expected a map")
            continue
        config = stage.get("config")
        body: Mapping[str, Any] = config if isinstance(config, Mapping) else {}
        kind = stage.get("type", body.get("type"))
        if kind not in _STAGE_TYPES:
            mistakes.append(
                f"{where}.type: a {show(kind)} stage is not supported (triobench runs "
                "validation, prepare, execute and cleanup stages)"
            )
            continue
        if kinds and _STAGE_TYPES.index(kind) <= _STAGE_TYPES.index(kinds[-1]):
            mistakes.append(f"{where}: a {kind} stage after {kinds[-1]} is not supported")
        kinds.append(kind)
        mistakes += _barriers(stage.get("barrier"), f"{where}.barrier", kind == "cleanup")
        duration = stage.get("duration", body.get("duration"))
        if kind == "execute" and duration is not None:
            given = out.get("duration")
            try:
                if given is not None and parse_duration(given) != parse_duration(duration):
                    notes.append(
                        f"duration: the execute stage's ({duration}) is the run's, as in "
                        f"sai3-bench; the top-level {given} is not used"
                    )
            except ValueError as exc:
                mistakes.append(f"{where}.duration: {exc}")
                continue
            out["duration"] = duration
    if not mistakes:
        notes.append(
            f"distributed.stages: {', '.join(kinds)}: triobench's stages, run in that order "
            "by every agent together"
        )
    return mistakes


def _perf_log(out: dict[str, Any], notes: list[str]) -> list[str]:
    """sai3-bench's ``perf_log: {enabled, interval}``: perf_log.tsv is always written, one row
    per stats interval, so ``interval`` is ``distributed.stats_interval``."""
    section = out.pop("perf_log")
    if not isinstance(section, Mapping):
        return [f"perf_log: expected a map {{enabled, interval}}, got {_yaml_type(section)}"]
    section = dict(section)
    if "interval_seconds" in section and "interval" not in section:  # older spelling
        section["interval"] = section.pop("interval_seconds")
    if "path" in section:
        section.pop("path")
        notes.append("perf_log.path: perf_log.tsv is written in the results directory")
    extra = sorted(set(section) - {"enabled", "interval"})
    if extra:
        return [f"perf_log.{extra[0]}: unknown key (expected enabled, interval)"]
    if type(section.get("enabled", True)) is not bool:
        return ["perf_log.enabled: expected true or false"]
    if "interval" in section:
        distributed = dict(out.get("distributed") or {})
        given = distributed.get("stats_interval")
        try:
            same = given is None or parse_duration(given) == parse_duration(section["interval"])
        except ValueError as exc:
            return [f"perf_log.interval: {exc}"]
        if not same:
            return ["perf_log.interval: differs from distributed.stats_interval (they are one)"]
        distributed["stats_interval"] = section["interval"]
        out["distributed"] = distributed
    notes.append(
        "perf_log: perf_log.tsv is always written in the results, one row per stats interval"
        + (" (perf_log.interval is distributed.stats_interval)" if "interval" in section else "")
        + ("; enabled: false does not turn it off" if section.get("enabled") is False else "")
    )
    return []
