"""Hypothesis strategies for protocol values: every message type with valid random fields."""

from __future__ import annotations

from typing import Any

import attrs
from hypothesis import strategies as st

from trio_bench import protocol as p
from trio_bench.stats import merge_ops

u64 = st.integers(min_value=0, max_value=2**64 - 1)
small = st.integers(min_value=0, max_value=10**12)
text = st.text(max_size=40)
json_scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20)
json_like = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def histograms(draw: Any) -> tuple[tuple[tuple[int, int], ...], int]:
    indices = draw(st.lists(st.integers(0, p.NBINS - 1), unique=True, max_size=30))
    pairs = tuple((i, draw(st.integers(1, 10**9))) for i in sorted(indices))
    return pairs, sum(c for _, c in pairs)


@st.composite
def op_stats(draw: Any) -> p.OpStats:
    hist, _ops = draw(histograms())
    return p.OpStats.from_pairs(
        hist, bytes=draw(small), errors=draw(small), sum_ns=draw(small), max_ns=draw(small)
    )


ops_maps = st.dictionaries(st.sampled_from(p.OP_KINDS), op_stats(), max_size=3)


@st.composite
def ops_with_sizes(draw: Any) -> tuple[dict[str, p.OpStats], dict[str, dict[str, Any]]]:
    """An ``ops`` map and a ``sizes`` map that agree: some kinds split over size buckets
    (the kind's numbers merged from them), some as one nil bucket, some not split."""
    ops = draw(ops_maps)
    sizes: dict[str, dict[str, Any]] = {}
    for kind in list(ops):
        form = draw(st.sampled_from(("none", "nil", "split")))
        if form == "nil":
            sizes[kind] = {draw(st.sampled_from(p.SIZE_LABELS)): None}
        elif form == "split":
            labels = draw(
                st.lists(st.sampled_from(p.SIZE_LABELS), min_size=1, max_size=3, unique=True)
            )
            buckets = {label: draw(op_stats()) for label in labels}
            buckets = {label: attrs.evolve(b, errors=0) for label, b in buckets.items()}
            merged = merge_ops(buckets.values())
            ops[kind] = attrs.evolve(merged, errors=ops[kind].errors)
            sizes[kind] = buckets
    return ops, sizes


stage_summaries = ops_with_sizes().flatmap(
    lambda pair: st.builds(
        p.StageSummary,
        ops=st.just(pair[0]),
        sizes=st.just(pair[1]),
        stage=st.sampled_from(p.STAGES),
        outcome=st.sampled_from(p.OUTCOMES),
        started_at_ns=small,
        ended_at_ns=small,
        measured_ns=small,
        done=small,
        total=small,
        error_samples=st.dictionaries(
            st.sampled_from(p.OP_KINDS), st.lists(text, max_size=3).map(tuple), max_size=2
        ),
        error_codes=st.dictionaries(
            st.sampled_from(p.OP_KINDS), st.dictionaries(text, u64, max_size=3), max_size=2
        ),
        message=text,
        cpu_user_ns=u64,
        cpu_system_ns=u64,
    )
)
_BY_NAME: dict[str, st.SearchStrategy[Any]] = {
    "stage": st.sampled_from(p.STAGES),
    "code": st.sampled_from(p.ERROR_CODES),
    "outcome": st.sampled_from(p.OUTCOMES),
    "ops": ops_maps,
    "error_codes": st.dictionaries(
        st.sampled_from(p.OP_KINDS), st.dictionaries(text, u64, max_size=3), max_size=2
    ),
    "agent_id": st.from_regex(p.AGENT_ID, fullmatch=True),
    "summary": stage_summaries,
    "summaries": st.lists(stage_summaries, max_size=3).map(tuple),
    "config": st.dictionaries(st.text(max_size=10), json_like, max_size=5),
    "checks": st.lists(text, max_size=3).map(tuple),
    "environment": st.dictionaries(st.text(max_size=10), text, max_size=3),
    "session": st.none()
    | st.builds(p.SessionInfo, run_id=text, state=text, attached=st.booleans()),
    # CONFIGURE's bounded fields (agent_index must also be below agent_count: see message_of)
    "stats_interval_ns": st.integers(*p.STATS_INTERVAL_RANGE_NS),
    "orphan_timeout_ns": st.integers(*p.ORPHAN_TIMEOUT_RANGE_NS),
    "agent_count": st.integers(1, 2**32),
    "agent_index": st.just(0),
    "run_id": st.from_regex(p.RUN_ID, fullmatch=True),
    "path_prefix": st.from_regex(p.PATH_PREFIX, fullmatch=True),
}
_BY_TYPE: dict[Any, st.SearchStrategy[Any]] = {
    int: u64,
    "int": u64,
    str: text,
    "str": text,
    bytes: st.binary(max_size=48),
    "bytes": st.binary(max_size=48),
    bool: st.booleans(),
    "bool": st.booleans(),
}


def message_of(cls: type[p.Message]) -> st.SearchStrategy[p.Message]:
    kwargs = {}
    names = {field.name for field in attrs.fields(cls)}  # type: ignore[arg-type]
    for field in attrs.fields(cls):  # type: ignore[arg-type]
        if field.name in ("ops", "sizes") and "sizes" in names:
            continue  # drawn together: sizes must agree with ops
        strategy = _BY_NAME.get(field.name)
        kwargs[field.name] = strategy if strategy is not None else _BY_TYPE[field.type]
    if "sizes" not in names:
        return st.builds(cls, **kwargs)
    return ops_with_sizes().flatmap(
        lambda pair: st.builds(cls, ops=st.just(pair[0]), sizes=st.just(pair[1]), **kwargs)
    )


messages = st.sampled_from(p.MESSAGE_TYPES).flatmap(message_of)


def stats_message(seq: int = 1, **fields: Any) -> p.Stats:
    """A STATS message for tests: an empty workload interval unless ``fields`` say otherwise."""
    defaults: dict[str, Any] = {
        "stage": "workload",
        "warmup": False,
        "elapsed_ns": 0,
        "done": 0,
        "total": 0,
        "ops": {},
        "error_codes": {},
        "cpu_user_ns": 0,
        "cpu_system_ns": 0,
        "at_ns": 0,
        "sizes": {},
    }
    return p.Stats(seq=seq, **{**defaults, **fields})
