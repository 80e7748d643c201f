"""Clock math, sequence tracking and authentication proofs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_bench import protocol as p

ns = st.integers(0, 10**9)


def exchange(t1: int, offset: int, up: int, down: int, processing: int) -> p.ClockSample:
    t2 = t1 + up + offset
    t3 = t2 + processing
    t4 = t3 - offset + down
    return p.ClockSample(t1, t2, t3, t4)


@given(st.integers(10**18, 2 * 10**18), st.integers(-(10**11), 10**11), ns, ns, ns)
def test_offset_and_rtt(t1: int, offset: int, up: int, down: int, processing: int) -> None:
    sample = exchange(t1, offset, up, down, processing)
    assert sample.rtt_ns == up + down
    assert abs(sample.offset_ns - offset) <= abs(up - down) // 2 + 1
    assert abs(sample.offset_ns - offset) <= sample.error_bound_ns


def test_symmetric_path_gives_the_exact_offset() -> None:
    assert exchange(10**18, 5_000_000_000, 1000, 1000, 77).offset_ns == 5_000_000_000
    assert exchange(10**18, -3_000_000_000, 1000, 1000, 0).offset_ns == -3_000_000_000


@given(st.lists(st.tuples(ns, ns, ns), min_size=1, max_size=20), st.integers(-(10**10), 10**10))
def test_best_sample_has_minimum_rtt_and_the_tightest_bound(delays, offset) -> None:
    samples = [exchange(10**18 + i * 10**9, offset, u, d, q) for i, (u, d, q) in enumerate(delays)]
    best = p.best_sample(samples)
    assert best.rtt_ns == min(s.rtt_ns for s in samples)
    assert abs(best.offset_ns - offset) <= best.error_bound_ns


@given(st.integers(0, 2**62), st.integers(-(10**12), 10**12))
def test_clock_conversions_are_inverse(instant: int, offset: int) -> None:
    assert p.to_controller_clock(p.to_agent_clock(instant, offset), offset) == instant


def test_estimator_prefers_min_rtt_within_its_window() -> None:
    est = p.ClockEstimator(window=3)
    assert est.offset_ns is None
    est.add(exchange(10**18, 500, 10, 10, 0))  # rtt 20, exact
    est.add(exchange(10**18 + 1, 500, 1000, 10, 0))  # rtt 1010, off by 495
    assert est.offset_ns == 500
    est.add(exchange(10**18 + 2, 500, 1000, 10, 0))
    est.add(exchange(10**18 + 3, 500, 1000, 10, 0))  # the good one slides out
    assert len(est) == 3
    assert est.offset_ns == 500 + (1000 - 10) // 2


def test_estimator_refuses_impossible_samples() -> None:
    est = p.ClockEstimator()
    with pytest.raises(p.ProtocolError, match="precedes its receive time"):
        est.add(p.ClockSample(0, 10, 5, 20))
    with pytest.raises(p.ProtocolError, match="negative round trip"):
        est.add(p.ClockSample(100, 10, 50, 120))


# --- sequences --------------------------------------------------------------------------------


def test_reliable_sender_resends_until_acked() -> None:
    sender = p.ReliableSender()
    for now in (0, 10, 20):
        seq = sender.next_seq()
        sender.sent(seq, f"m{seq}", now)
    assert sender.due(now_ns=25, interval_ns=10) == ["m1", "m2"]
    assert sender.due(now_ns=26, interval_ns=10) == []  # just re-sent
    assert sender.ack(2) == ["m1", "m2"]
    assert list(sender.unacked()) == ["m3"]
    assert sender.due(now_ns=30, interval_ns=10) == ["m3"]
    assert sender.ack(2) == []  # a duplicate ACK is harmless
    with pytest.raises(p.ProtocolError, match="ack: seq 9 was never sent"):
        sender.ack(9)
    assert sender.ack(3) == ["m3"] and len(sender) == 0


@given(st.lists(st.integers(1, 30), max_size=60))
def test_reliable_receiver_processes_each_seq_once_in_order(seqs: list[int]) -> None:
    receiver = p.ReliableReceiver()
    processed = []
    for seq in seqs:
        try:
            if receiver.accept(seq):
                processed.append(seq)
        except p.ProtocolError as exc:
            assert seq > receiver.processed + 1
            assert "skips ahead" in str(exc)
    assert processed == list(range(1, len(processed) + 1))


def test_stats_sequence_counts_gaps_and_stale() -> None:
    seq = p.StatsSequence()
    assert [seq.accept(n) for n in (1, 2, 5, 4, 5, 6)] == [True, True, True, False, False, True]
    assert (seq.last, seq.gaps, seq.stale) == (6, 2, 2)


# --- authentication ---------------------------------------------------------------------------

TOKEN = b"correct horse battery staple"


def test_proofs() -> None:
    a, c = p.new_challenge(), p.new_challenge()
    assert len(a) == p.CHALLENGE_SIZE and a != c
    proof = p.make_proof(TOKEN, "controller", "a1", a, c)
    assert p.check_proof(TOKEN, "controller", "a1", a, c, proof)
    assert TOKEN not in proof
    assert not p.check_proof(b"wrong", "controller", "a1", a, c, proof)
    assert not p.check_proof(TOKEN, "agent", "a1", a, c, proof)  # reflection
    assert not p.check_proof(TOKEN, "controller", "a2", a, c, proof)
    assert not p.check_proof(TOKEN, "controller", "a1", p.new_challenge(), c, proof)  # replay
    assert not p.check_proof(TOKEN, "controller", "a1", a, c, b"")


def test_receiver_check_then_commit_counts_only_applied_messages() -> None:
    receiver = p.ReliableReceiver()
    assert receiver.check(1, "start")
    assert receiver.processed == 0  # refused by the state machine: not processed
    assert receiver.check(1, "start")
    receiver.commit(1)
    assert not receiver.check(1, "start") and receiver.duplicates == 1
    with pytest.raises(p.ProtocolError, match="start: seq 3 skips ahead"):
        receiver.check(3, "start")


def test_sender_stamp_numbers_and_keeps_messages() -> None:
    sender = p.ReliableSender()
    first = sender.stamp(lambda seq: ("m", seq), now_ns=5)
    second = sender.stamp(lambda seq: ("m", seq), now_ns=6)
    assert (first, second) == (("m", 1), ("m", 2))
    assert list(sender.unacked()) == [first, second]


@given(st.lists(st.integers(0, 50), min_size=1, max_size=120), st.integers(1, 8))
def test_the_estimate_is_always_the_best_of_the_window(rtts: list[int], window: int) -> None:
    """The estimator keeps its best sample up to date as samples come and go (it is read for
    every STATS): always the min-RTT one of the last ``window``, the latest among equals."""
    est = p.ClockEstimator(window=window)
    samples = []
    for i, rtt in enumerate(rtts):
        sample = p.ClockSample(
            t1_ns=i * 1000, t2_ns=i * 1000 + 7, t3_ns=i * 1000 + 7, t4_ns=i * 1000 + rtt
        )
        samples.append(sample)
        est.add(sample)
        assert est.best is p.best_sample(samples[-window:])
