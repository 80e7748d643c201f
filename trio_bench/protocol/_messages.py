"""Every message of the triobench protocol, and their one strict codec.

A message is a frozen attrs class with a stable wire tag (``TAG``). On the wire it is a msgpack
map: ``{"t": TAG, <field>: <value>, ...}``. Decoding is strict: an unknown tag, a missing
field, an extra key, a value of the wrong type (no coercion: ``"5"`` is not an int, ``True`` is
not an int), an integer outside [0, 2**64), an unknown stage or op kind, or an inconsistent
histogram is one ``ProtocolError`` naming the tag and the field. Nothing else escapes.

All times are integer nanoseconds. Wall-clock instants (``*_at_ns``, ``t1_ns``...) are in the
clock of the side that took them; the controller converts agent instants with the measured
offset (see ``_clock``).
"""

from __future__ import annotations

import itertools
import operator
import re
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar, TypeVar

import attrs
import cattrs
from cattrs.errors import BaseValidationError, ForbiddenExtraKeysError

from ._errors import ProtocolError
from ._frames import MAX_FRAME_SIZE, encode_frame
from ._histogram import NBINS
from ._sizes import SIZE_LABELS

PROTOCOL_VERSION = 7

STAGES = ("prepare", "workload", "cleanup")
OP_KINDS = ("get", "put", "stat", "list", "delete", "mkdir", "rmdir")
OUTCOMES = ("completed", "aborted", "failed")
ERROR_CODES = (
    "version_mismatch",  # handshake: the two sides speak different protocol versions
    "auth_failed",  # handshake: token proof missing or wrong
    "busy",  # handshake: the agent is serving another controller's run
    "unknown_run",  # RESUME for a run the agent does not hold
    "bad_config",  # CONFIGURE: the workload config is invalid for this agent
    "preflight_failed",  # CONFIGURE: target unreachable or not readable/writable
    "stage_failed",  # a stage failed (error threshold, backend failure)
    "protocol_error",  # the peer sent bad bytes or a message not allowed now
    "internal",  # a bug on the sending side
)

# Error messages and samples are for people; cap what one side sends so a runaway string
# cannot crowd out the frame limit.
MAX_TEXT = 2000
MAX_ERROR_SAMPLES = 5

_U64 = 1 << 64
# Bounds an agent enforces on CONFIGURE: a zero stats interval would be a flood of STATS, a
# zero orphan timeout would abort the run at once.
STATS_INTERVAL_RANGE_NS = (10_000_000, 3_600_000_000_000)  # 10 ms .. 1 h
ORPHAN_TIMEOUT_RANGE_NS = (1_000_000_000, 7 * 86_400_000_000_000)  # 1 s .. 7 days


def _between(low: int, high: int) -> Any:
    def check(_inst: Any, attribute: attrs.Attribute[Any], value: int) -> None:
        if not low <= value <= high:
            raise ValueError(f"{attribute.name} {value} is outside [{low}, {high}]")

    return check


def _stage(_inst: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    if value not in STAGES:
        raise ValueError(f"unknown stage {value!r} (expected {', '.join(STAGES)})")


def _op_keys(_inst: Any, attribute: attrs.Attribute[Any], value: dict[str, Any]) -> None:
    for key in value:
        if key not in OP_KINDS:
            raise ValueError(f"unknown op kind {key!r} (expected {', '.join(OP_KINDS)})")


def _sizes(inst: Any, attribute: attrs.Attribute[Any], value: dict[str, Any]) -> None:
    """``sizes[kind][label]``: the kind's successful operations split by size bucket. Every
    kind must be in ``ops``, its buckets' counts add up to the kind's ``ops``; a nil bucket
    (the kind's only one) stands for all of the kind's operations."""
    ops = inst.ops
    for kind, buckets in value.items():
        if kind not in ops:
            raise ValueError(f"sizes[{kind!r}] names an op kind missing from ops")
        for label in buckets:
            if label not in SIZE_LABELS:
                raise ValueError(
                    f"sizes[{kind!r}] has unknown size bucket {label!r} "
                    f"(expected {', '.join(SIZE_LABELS)})"
                )
        if None in buckets.values():
            if len(buckets) != 1:
                raise ValueError(
                    f"sizes[{kind!r}] has a nil bucket beside others (nil must be alone)"
                )
            continue
        total = sum(stats.ops for stats in buckets.values())
        if total != ops[kind].ops:
            raise ValueError(
                f"sizes[{kind!r}] buckets add up to {total} ops, but ops[{kind!r}] has "
                f"{ops[kind].ops}"
            )


def _one_of(options: tuple[str, ...]) -> Any:
    def check(_inst: Any, attribute: attrs.Attribute[Any], value: str) -> None:
        if value not in options:
            raise ValueError(f"unknown value {value!r} (expected {', '.join(options)})")

    return check


# An agent id names a results folder and a path prefix on the controller's side: a peer must
# not be able to choose "../x".
AGENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _agent_id(_inst: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    if not AGENT_ID.fullmatch(value):
        raise ValueError(
            f"agent id {value[:80]!r} is not 1-64 of A-Z a-z 0-9 . _ - (first not . _ -)"
        )


def printable(text: str, limit: int = MAX_TEXT) -> str:
    """``text`` made safe to send and show: at most ``limit`` characters, and every character
    UTF-8 cannot carry escaped. A file name that is not UTF-8 arrives from ``os`` with its raw
    bytes as surrogate escapes; they become ``\\xNN`` (the bytes as they are on disk), any
    other lone surrogate ``\\udNNN``."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        errors = "surrogateescape" if _only_escapes(text) else "backslashreplace"
        text = text.encode("utf-8", errors).decode("utf-8", "backslashreplace")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _only_escapes(text: str) -> bool:
    """Whether every surrogate in ``text`` is one of ``surrogateescape``'s (U+DC80-U+DCFF)."""
    return all(not 0xD800 <= ord(ch) <= 0xDFFF or 0xDC80 <= ord(ch) <= 0xDCFF for ch in text)


# A run id names the agent's local results file; a path prefix is put in front of every key
# the agent touches. Neither may ever be a path a peer chose ("../../x", "", 300 characters).
RUN_ID = AGENT_ID
PATH_PREFIX = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9._-]{0,63}/)?")


def _run_id(_inst: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    if not RUN_ID.fullmatch(value):
        raise ValueError(
            f"run id {value[:80]!r} is not 1-64 of A-Z a-z 0-9 . _ - (first not . _ -)"
        )


def _path_prefix(_inst: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    if not PATH_PREFIX.fullmatch(value):
        raise ValueError(
            f"path_prefix {value[:80]!r} is neither empty nor one folder name (an agent id) "
            "and a '/'"
        )


def _text(_inst: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    if len(value) > MAX_TEXT:
        raise ValueError(f"text of {len(value)} characters exceeds {MAX_TEXT}")


MAX_FACTS = 32  # READY's environment: at most this many entries, each key and value text


def _facts(_inst: Any, attribute: attrs.Attribute[Any], value: dict[str, str]) -> None:
    if len(value) > MAX_FACTS:
        raise ValueError(f"{len(value)} entries exceed {MAX_FACTS}")
    for key, fact in value.items():
        if len(key) > 64 or len(fact) > MAX_TEXT:
            raise ValueError(
                f"entry {key[:64]!r} is longer than allowed (key 64, value {MAX_TEXT})"
            )


# --- payload records -------------------------------------------------------------------------


@attrs.frozen
class OpStats:
    """Cumulative statistics of one op kind: counters and a sparse latency histogram.

    The histogram is two arrays of equal length: ``buckets``, the indices of the occupied
    buckets, strictly increasing within [0, NBINS); ``counts``, each one's count (>= 1),
    adding up to ``ops`` (successful operations; failed ones are only in ``errors``).
    """

    ops: int
    bytes: int
    errors: int
    sum_ns: int
    max_ns: int
    buckets: tuple[int, ...]
    counts: tuple[int, ...]

    @classmethod
    def from_pairs(
        cls, pairs: Iterable[tuple[int, int]], *, bytes: int, errors: int, sum_ns: int, max_ns: int
    ) -> OpStats:
        """From (bucket index, count) pairs in bucket order; ``ops`` is their total."""
        pairs = list(pairs)
        counts = tuple(count for _, count in pairs)
        return cls(sum(counts), bytes, errors, sum_ns, max_ns, tuple(i for i, _ in pairs), counts)

    def pairs(self) -> Iterator[tuple[int, int]]:
        """The histogram as (bucket index, count) pairs, in bucket order."""
        return zip(self.buckets, self.counts)

    def check(self) -> None:
        """The rules of the wire form (decoding checks them; values built here are trusted)."""
        _check_uints(self.buckets, "buckets")
        _check_uints(self.counts, "counts")
        _check_hist(self.buckets, self.counts, self.ops)


OPSTATS_FIELDS = ("ops", "bytes", "errors", "sum_ns", "max_ns", "buckets", "counts")
_OPSTATS_KEYS = frozenset(OPSTATS_FIELDS)
_INT = {int}


def _check_uints(value: Any, name: str) -> tuple[int, ...]:
    """An array of unsigned 64-bit integers, as a tuple; checked as whole-array operations
    (histograms are the bulk of every STATS frame), walked only to say what is wrong."""
    if type(value) is not list and type(value) is not tuple:
        raise TypeError(f"{name}: expected array, got {type(value).__name__}")
    if value and (set(map(type, value)) != _INT or min(value) < 0 or max(value) >= _U64):
        for i, item in enumerate(value):
            if type(item) is not int:
                raise TypeError(f"{name}[{i}] is a {type(item).__name__}, expected int")
            if not 0 <= item < _U64:
                raise ValueError(f"{name}[{i}] is {item}, outside [0, 2**64)")
    return tuple(value)


def _check_hist(buckets: tuple[int, ...], counts: tuple[int, ...], ops: int) -> None:
    """The histogram's rules, given two arrays of unsigned integers (``OpStats``)."""
    if len(buckets) != len(counts):
        raise ValueError(f"buckets and counts differ in length ({len(buckets)}, {len(counts)})")
    if buckets:
        if buckets[-1] >= NBINS or not all(map(operator.lt, buckets, buckets[1:])):
            previous = -1
            for i, index in enumerate(buckets):
                if not previous < index < NBINS:
                    raise ValueError(
                        f"buckets[{i}] is {index}: out of order or outside [0, {NBINS})"
                    )
                previous = index
        if min(counts) < 1:
            i = counts.index(min(counts))
            raise ValueError(f"counts[{i}] is {counts[i]} (must be >= 1)")
    total = sum(counts)
    if total != ops:
        raise ValueError(f"counts: add up to {total}, but ops is {ops}")


def op_stats_from_wire(value: Any) -> OpStats:
    """One decoded OpStats map, checked: the exact fields, unsigned integers, the histogram's
    rules. Written out rather than generated: STATS carry several per frame."""
    if type(value) is not dict:
        raise TypeError(f"expected map, got {type(value).__name__}")
    if value.keys() != _OPSTATS_KEYS:
        missing = [k for k in OPSTATS_FIELDS if k not in value]
        if missing:
            raise ValueError(f"{missing[0]}: required field missing")
        raise ValueError(f"unexpected field(s) {sorted(map(str, value.keys() - _OPSTATS_KEYS))}")
    numbers = [value["ops"], value["bytes"], value["errors"], value["sum_ns"], value["max_ns"]]
    if set(map(type, numbers)) != _INT or min(numbers) < 0 or max(numbers) >= _U64:
        for name, number in zip(OPSTATS_FIELDS, numbers):
            try:
                _structure_int(number, int)
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"{name}: {exc}") from None
    ops, nbytes, errors, sum_ns, max_ns = numbers
    buckets, counts = _wire_hist(value["buckets"], value["counts"], ops)
    return OpStats(ops, nbytes, errors, sum_ns, max_ns, buckets, counts)


def _wire_hist(buckets: Any, counts: Any, ops: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """A decoded histogram, checked in as few passes as its rules allow: bucket indices
    strictly increasing from >= 0 to < NBINS are all in range, counts >= 1 are all unsigned.
    Anything else goes through the checks that say what is wrong and where."""
    if (  # counts >= 1 adding up to ops (< 2**64) are each < 2**64: no max() pass
        type(buckets) is list
        and type(counts) is list
        and buckets
        and len(buckets) == len(counts)
        and set(map(type, buckets + counts)) == _INT
        and buckets[0] >= 0
        and buckets[-1] < NBINS
        and all(map(operator.lt, buckets, itertools.islice(buckets, 1, None)))
        and min(counts) >= 1
        and sum(counts) == ops
    ):
        return tuple(buckets), tuple(counts)
    checked = _check_uints(buckets, "buckets"), _check_uints(counts, "counts")
    _check_hist(*checked, ops)
    return checked


@attrs.frozen
class StageSummary:
    """What one agent did in one stage, final: the numbers results are made of.

    ``error_codes`` counts failed operations per op kind and error code (an S3 code such as
    ``NoSuchKey`` or ``SlowDown``, ``ConnectionRefused``, an exception name for files).

    ``started_at_ns``/``ended_at_ns`` are the agent's wall clock. ``measured_ns`` is the
    length of the measured window (the stage minus any warmup). ``done``/``total`` count
    objects for prepare and cleanup (0/0 for the workload). ``cpu_user_ns``/``cpu_system_ns``:
    the CPU time the agent process used in the measured window (all its threads), so a reader
    can tell when the load generator, not the storage, was the limit. ``sizes`` splits each
    kind's successful operations by size bucket (``SIZE_BUCKETS``).
    """

    stage: str = attrs.field(validator=_stage)
    outcome: str = attrs.field(validator=_one_of(OUTCOMES))
    started_at_ns: int
    ended_at_ns: int
    measured_ns: int
    done: int
    total: int
    ops: dict[str, OpStats] = attrs.field(validator=_op_keys)
    error_samples: dict[str, tuple[str, ...]] = attrs.field(validator=_op_keys)
    error_codes: dict[str, dict[str, int]] = attrs.field(validator=_op_keys)
    message: str = attrs.field(validator=_text)
    cpu_user_ns: int
    cpu_system_ns: int
    sizes: dict[str, dict[str, OpStats | None]] = attrs.field(validator=_sizes)


@attrs.frozen
class SessionInfo:
    """The run an agent holds when a controller connects (see HELLO and RESUME)."""

    run_id: str
    state: str
    attached: bool


# --- messages --------------------------------------------------------------------------------


class Message:
    """Base of all messages. ``TAG`` is the stable wire tag; ``RELIABLE`` messages carry a
    ``seq`` and are re-sent until the peer ACKs them."""

    TAG: ClassVar[str] = ""
    RELIABLE: ClassVar[bool] = False


@attrs.frozen
class Hello(Message):
    """agent -> controller, first frame of every connection."""

    TAG = "hello"
    protocol: int
    software: str
    agent_id: str = attrs.field(validator=_agent_id)
    hostname: str = attrs.field(validator=_text)
    cpus: int
    challenge: bytes
    auth_required: bool
    session: SessionInfo | None


@attrs.frozen
class Auth(Message):
    """controller -> agent, answers HELLO. ``proof`` is empty when no token is configured."""

    TAG = "auth"
    protocol: int
    software: str
    controller: str
    challenge: bytes
    proof: bytes


@attrs.frozen
class Welcome(Message):
    """agent -> controller: handshake accepted. ``proof`` proves the agent knows the token."""

    TAG = "welcome"
    proof: bytes


@attrs.frozen
class Configure(Message):
    """controller -> agent: start a run session with this workload."""

    TAG = "configure"
    RELIABLE = True
    seq: int
    run_id: str = attrs.field(validator=_run_id)
    config: dict[str, Any]
    agent_index: int
    agent_count: int
    path_prefix: str = attrs.field(validator=_path_prefix)
    stats_interval_ns: int = attrs.field(validator=_between(*STATS_INTERVAL_RANGE_NS))
    orphan_timeout_ns: int = attrs.field(validator=_between(*ORPHAN_TIMEOUT_RANGE_NS))

    def __attrs_post_init__(self) -> None:
        if not 0 <= self.agent_index < self.agent_count:
            raise ValueError(
                f"agent_index {self.agent_index} is not in [0, agent_count {self.agent_count})"
            )


@attrs.frozen
class Resume(Message):
    """controller -> agent: re-attach to a run the agent still holds after a lost connection."""

    TAG = "resume"
    run_id: str = attrs.field(validator=_run_id)
    acked: int  # highest agent seq the controller has processed


@attrs.frozen
class Resumed(Message):
    """agent -> controller: re-attached; unACKed reliable messages follow."""

    TAG = "resumed"
    run_id: str
    state: str
    acked: int  # highest controller seq the agent has processed


@attrs.frozen
class Ready(Message):
    """agent -> controller: configured and preflight passed."""

    TAG = "ready"
    RELIABLE = True
    seq: int
    target: str
    checks: tuple[str, ...]
    # facts about the agent's host and target for the results (protocol.md §3, READY)
    environment: dict[str, str] = attrs.field(validator=_facts)


@attrs.frozen
class Error(Message):
    """Either direction. ``seq`` 0: a handshake/connection error, the sender closes after it.
    ``seq`` > 0 (agent -> controller only): the run failed; reliable, carries partial results."""

    TAG = "error"
    seq: int
    code: str = attrs.field(validator=_one_of(ERROR_CODES))
    message: str = attrs.field(validator=_text)
    summaries: tuple[StageSummary, ...]

    @property
    def RELIABLE(self) -> bool:  # type: ignore[override]
        return self.seq > 0


@attrs.frozen
class Ping(Message):
    """controller -> agent. ``t1_ns``: controller clock when sent."""

    TAG = "ping"
    nonce: int
    t1_ns: int


@attrs.frozen
class Pong(Message):
    """agent -> controller: ``t2_ns`` PING received, ``t3_ns`` PONG sent (agent clock)."""

    TAG = "pong"
    nonce: int
    t1_ns: int
    t2_ns: int
    t3_ns: int


@attrs.frozen
class Start(Message):
    """controller -> agent: begin ``stage`` at ``at_ns`` on the agent's clock. The first
    START is the coordinated start; each later one is the release of a stage barrier."""

    TAG = "start"
    RELIABLE = True
    seq: int
    stage: str = attrs.field(validator=_stage)
    at_ns: int


@attrs.frozen
class Started(Message):
    """agent -> controller: ``stage`` began at ``at_ns`` (agent clock), for start skew."""

    TAG = "started"
    RELIABLE = True
    seq: int
    stage: str = attrs.field(validator=_stage)
    at_ns: int


@attrs.frozen
class Stats(Message):
    """agent -> controller, every stats interval: cumulative since the stage (or, after a
    warmup, the measured window) began. Numbered by their own ``seq``; a newer one
    supersedes an older one, so dropping an unsent older one loses nothing."""

    TAG = "stats"
    seq: int
    stage: str = attrs.field(validator=_stage)
    warmup: bool
    elapsed_ns: int
    done: int
    total: int
    ops: dict[str, OpStats] = attrs.field(validator=_op_keys)
    error_codes: dict[str, dict[str, int]] = attrs.field(validator=_op_keys)
    cpu_user_ns: int  # the agent process's CPU time in the same window as ``ops``
    cpu_system_ns: int
    at_ns: int  # when the numbers were read (agent clock): places them on the timeline
    sizes: dict[str, dict[str, OpStats | None]] = attrs.field(validator=_sizes)


@attrs.frozen
class StatsSeen(Message):
    """controller -> agent, for a STATS frame at least ``STATS_IN_FLIGHT`` seqs past the last
    one acknowledged (about every second): flow control. An agent keeps its STATS seqs less
    than ``STATS_IN_FLIGHT`` beyond the last one seen, so on a link
    slower than the statistics the backlog stays in the agent's replaceable slot and never
    in network buffers, where a control message would queue behind it."""

    TAG = "stats_seen"
    seq: int


STATS_IN_FLIGHT = 2


@attrs.frozen
class StageDone(Message):
    """agent -> controller: ``stage`` finished; the agent waits at the barrier."""

    TAG = "stage_done"
    RELIABLE = True
    seq: int
    summary: StageSummary


@attrs.frozen
class Abort(Message):
    """controller -> agent: cancel whatever runs now, answer ABORTED."""

    TAG = "abort"
    RELIABLE = True
    seq: int
    reason: str = attrs.field(validator=_text)


@attrs.frozen
class Aborted(Message):
    """agent -> controller: the run was aborted; partial results."""

    TAG = "aborted"
    RELIABLE = True
    seq: int
    reason: str = attrs.field(validator=_text)
    summaries: tuple[StageSummary, ...]


@attrs.frozen
class Completed(Message):
    """agent -> controller: every stage finished; final results."""

    TAG = "completed"
    RELIABLE = True
    seq: int
    summaries: tuple[StageSummary, ...]


@attrs.frozen
class Ack(Message):
    """Either direction: every reliable message with sequence <= ``seq`` was processed."""

    TAG = "ack"
    seq: int


@attrs.frozen
class Goodbye(Message):
    """Either direction: the sender is closing the connection on purpose."""

    TAG = "goodbye"
    reason: str = attrs.field(validator=_text)


MESSAGE_TYPES: tuple[type[Message], ...] = (
    Hello,
    Auth,
    Welcome,
    Configure,
    Resume,
    Resumed,
    Ready,
    Error,
    Ping,
    Pong,
    Start,
    Started,
    Stats,
    StatsSeen,
    StageDone,
    Abort,
    Aborted,
    Completed,
    Ack,
    Goodbye,
)
_BY_TAG: dict[str, type[Message]] = {cls.TAG: cls for cls in MESSAGE_TYPES}
assert len(_BY_TAG) == len(MESSAGE_TYPES), "duplicate wire tag"

# Messages that carry results and therefore must never be silently lost.
TERMINAL_TYPES = (Completed, Aborted, Error)


def is_reliable(message: Message) -> bool:
    return bool(message.RELIABLE)


# --- the converter ---------------------------------------------------------------------------

T = TypeVar("T")


def _strict(kind: type[T], name: str) -> Any:
    def structure(value: Any, _type: Any) -> T:
        # bool is a subclass of int; on our wire it is never an integer.
        if type(value) is not kind:
            raise TypeError(f"expected {name}, got {type(value).__name__}")
        return value

    return structure


def _structure_int(value: Any, _type: Any) -> int:
    if type(value) is not int:
        raise TypeError(f"expected int, got {type(value).__name__}")
    if not 0 <= value < _U64:
        raise ValueError(f"integer {value} outside [0, 2**64)")
    return value


def _make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True)
    converter.register_structure_hook(int, _structure_int)
    converter.register_structure_hook(str, _strict(str, "str"))
    converter.register_structure_hook(bytes, _strict(bytes, "bytes"))
    converter.register_structure_hook(bool, _strict(bool, "bool"))

    # cattrs happily turns a string into a tuple of characters and calls .items() on
    # anything; on the wire an array must be an array and a map a map.
    def element(value: Any, type_: Any, where: str) -> Any:
        try:
            return converter.structure(value, type_)
        except (BaseValidationError, TypeError, ValueError, KeyError, AttributeError) as exc:
            raise ValueError(f"{where}: {_describe(exc)}") from None

    def tuple_factory(t: Any) -> Any:
        args = t.__args__
        homogeneous = len(args) == 2 and args[1] is Ellipsis

        def structure(value: Any, _type: Any) -> Any:
            if not isinstance(value, list | tuple):
                raise TypeError(f"expected array, got {type(value).__name__}")
            if homogeneous:
                return tuple(element(v, args[0], f"[{i}]") for i, v in enumerate(value))
            if len(value) != len(args):
                raise ValueError(f"expected an array of {len(args)}, got {len(value)}")
            return tuple(element(v, a, f"[{i}]") for i, (v, a) in enumerate(zip(value, args)))

        return structure

    def dict_factory(t: Any) -> Any:
        key_type, value_type = t.__args__

        def structure(value: Any, _type: Any) -> Any:
            if not isinstance(value, dict):
                raise TypeError(f"expected map, got {type(value).__name__}")
            out = {}
            for k, v in value.items():
                key = element(k, key_type, "key")
                out[key] = element(v, value_type, f"[{k!r}]")
            return out

        return structure

    def origin_is(kind: type) -> Any:
        return lambda t: getattr(t, "__origin__", None) is kind

    converter.register_structure_hook_factory(origin_is(tuple), tuple_factory)
    converter.register_structure_hook_factory(origin_is(dict), dict_factory)

    # Histograms are the bulk of every STATS frame (hundreds of buckets per op kind): one
    # hand-written function instead of a converter dispatch per integer.
    def op_stats(value: Any, _type: Any) -> OpStats:
        return op_stats_from_wire(value)

    converter.register_structure_hook(OpStats, op_stats)
    return converter


_converter = _make_converter()


def _format_leaf(exc: BaseException, _type: Any) -> str:
    if isinstance(exc, KeyError):
        return "required field missing"
    if isinstance(exc, ForbiddenExtraKeysError):
        return f"unexpected field(s) {sorted(exc.extra_fields)}"
    return str(exc)


def _describe(exc: BaseException) -> str:
    """One line out of a (possibly nested) cattrs validation error: 'field: what; ...'."""
    if isinstance(exc, ForbiddenExtraKeysError):
        return _format_leaf(exc, None)
    if isinstance(exc, BaseValidationError):
        parts = []
        for line in cattrs.transform_error(exc, path="", format_exception=_format_leaf):
            what, _, where = line.rpartition(" @ ")
            where = where.lstrip(".")
            parts.append(f"{where}: {what}" if where else what)
        # "ops: ['get']: hist: ..." reads better as "ops['get'].hist: ..."
        return re.sub(r"\]: (?=[\w\[])", "].", "; ".join(parts).replace(": [", "["))
    return str(exc)


def decode_message(frame: dict[str, Any]) -> Message:
    """Turn one decoded frame map into a message; every failure is a ``ProtocolError``."""
    tag = frame.get("t")
    if not isinstance(tag, str):
        raise ProtocolError("message: missing or non-string tag field 't'")
    cls = _BY_TAG.get(tag)
    if cls is None:
        raise ProtocolError(f"message: unknown tag {tag[:64]!r}")
    fields = {k: v for k, v in frame.items() if k != "t"}
    if cls is Stats:  # most of what a controller decodes: the common case without cattrs
        stats = _stats_fast(fields)
        if stats is not None:
            return stats
    try:
        return _converter.structure(fields, cls)
    except ForbiddenExtraKeysError as exc:
        raise ProtocolError(f"{tag}: unexpected field(s) {sorted(exc.extra_fields)}") from None
    except (BaseValidationError, TypeError, ValueError, KeyError, AttributeError) as exc:
        raise ProtocolError(f"{tag}: {_describe(exc)}") from None


_STATS_FIELDS = frozenset(field.name for field in attrs.fields(Stats))
_STATS_INTS = tuple(f.name for f in attrs.fields(Stats) if str(f.type) in ("int", str(int)))


def _is_uint(value: Any) -> bool:
    """What ``_structure_int`` accepts, as a test."""
    return type(value) is int and 0 <= value < _U64


def _stats_fast(fields: dict[str, Any]) -> Stats | None:
    """A well-formed STATS, checked as the converter checks it but written out (it is most of
    what a controller decodes: thousands a second). None at the first thing that is not as
    expected: the converter then decodes the frame again and says what is wrong."""
    if fields.keys() != _STATS_FIELDS or not all(_is_uint(fields[n]) for n in _STATS_INTS):
        return None
    ops, sizes, error_codes = fields["ops"], fields["sizes"], fields["error_codes"]
    if (
        type(fields["stage"]) is not str
        or type(fields["warmup"]) is not bool
        or type(ops) is not dict
        or type(sizes) is not dict
        or type(error_codes) is not dict
    ):
        return None
    try:
        checked_ops = {}
        for kind, value in ops.items():
            if type(kind) is not str:
                return None
            checked_ops[kind] = op_stats_from_wire(value)
        checked_sizes: dict[str, dict[str, OpStats | None]] = {}
        for kind, buckets in sizes.items():
            if type(kind) is not str or type(buckets) is not dict:
                return None
            labels: dict[str, OpStats | None] = {}
            for label, value in buckets.items():
                if type(label) is not str:
                    return None
                labels[label] = None if value is None else op_stats_from_wire(value)
            checked_sizes[kind] = labels
        for kind, codes in error_codes.items():
            if type(kind) is not str or type(codes) is not dict:
                return None
            if not all(type(code) is str and _is_uint(n) for code, n in codes.items()):
                return None
        return Stats(  # the validators (stage, op kinds, sizes) run here
            **{
                **fields,
                "ops": checked_ops,
                "sizes": checked_sizes,
                "error_codes": {kind: dict(codes) for kind, codes in error_codes.items()},
            }
        )
    except (TypeError, ValueError):
        return None


def unstructure_message(message: Message) -> dict[str, Any]:
    body: dict[str, Any] = {"t": message.TAG}
    body.update(_converter.unstructure(message))
    return body


def encode_message(message: Message, *, max_frame_size: int = MAX_FRAME_SIZE) -> bytes:
    """The framed bytes of ``message`` (``ValueError`` if it cannot be encoded)."""
    return encode_frame(unstructure_message(message), max_frame_size=max_frame_size)


def structure_as(value: Any, cls: type[T]) -> T:
    """Structure a plain value as a protocol record (for results files written by us)."""
    try:
        return _converter.structure(value, cls)
    except (BaseValidationError, TypeError, ValueError, KeyError, AttributeError) as exc:
        raise ProtocolError(f"{cls.__name__}: {_describe(exc)}") from None


def unstructure(value: Any) -> Any:
    return _converter.unstructure(value)
