"""The pure scheduler: who joins, who leaves, what each request is sent — no model, no clock."""

from __future__ import annotations

import numpy as np
import pytest

from tandem.cloud.scheduler import RELEASE_NEVER, Scheduler, Sequence
from tandem.cloud.validation import Job, ServedModel
from tandem.errors import Overloaded
from tandem.runtime.decoding import GenerationParams, StepResult


@pytest.fixture
def served(model):
    return ServedModel.from_manifest(model.manifest, model.fingerprint)


def _seq(served, key, deadline_s=100.0, prefix=(), lead=(), start=0, max_new=10):
    params = GenerationParams(max_new_tokens=max_new, prefix=tuple(prefix))
    job = Job(f"r{key}", served, np.zeros((1, 32), np.float32), params, start, tuple(lead))
    return Sequence(key, job, arrived_s=0.0, deadline_s=deadline_s)


def test_batch_and_queue_are_bounded_and_joins_happen_every_step(served):
    sched = Scheduler(max_batch=2, max_queue=2, retry_after_s=0.3)
    for key in range(2):
        sched.submit(_seq(served, key))
    assert [s.key for s in sched.plan(now_s=1.0, step_s=0.01).admit] == [0, 1]
    for key in range(2, 4):
        sched.submit(_seq(served, key))
    with pytest.raises(Overloaded) as info:
        sched.submit(_seq(served, 9))
    assert info.value.retry_after_s == 0.3
    assert sched.plan(now_s=1.0, step_s=0.01).admit == () and sched.queued_count == 2
    # Key 0 finishes (EOS, not streamed); key 1 continues; key 2 joins at the next plan.
    updates = sched.record([StepResult(0, 0, 1, "eos"), StepResult(1, 0, 44, None)], now_s=1.5)
    assert [(u.key, u.tokens, u.finish) for u in updates] == [(0, (), "eos"), (1, (44,), None)]
    assert updates[0].token_count == 0 and updates[0].queue_ms == 1000.0
    assert updates[0].decode_ms == 500.0
    assert [s.key for s in sched.plan(2.0, 0.01).admit] == [2]


def test_chunks_are_contiguous_from_the_prefix_and_the_forced_token_leads(served):
    sched = Scheduler(4, 4, 0.1)
    seqs = [
        _seq(served, 0, prefix=(7,), lead=(7,), start=0),
        _seq(served, 1, prefix=(7, 8, 9), start=3),
    ]
    for seq in seqs:
        sched.submit(seq)
    sched.plan(0.0, 0.01)
    first = sched.record(
        [StepResult(0, 1, 20, None), StepResult(0, 2, 21, None), StepResult(1, 3, 30, None)], 0.1
    )
    assert [(u.key, u.start, u.tokens) for u in first] == [(0, 0, (7, 20, 21)), (1, 3, (30,))]
    for seq in seqs:
        seq.release_s = 0.15  # both handlers sent their first chunk and ask for more
    last = sched.record([StepResult(0, 3, 22, "length"), StepResult(1, 4, 31, None)], 0.2)
    assert [(u.key, u.start, u.tokens, u.finish) for u in last] == [
        (0, 3, (22,), "length"),
        (1, 4, (31,), None),
    ]
    assert last[0].token_count == 4


def test_cancel_deadline_and_drain_make_sequences_leave(served):
    sched = Scheduler(max_batch=3, max_queue=4, retry_after_s=0.1, deadline_margin_s=0.05)
    for key, deadline in enumerate([100.0, 100.0, 1.0, 1.0]):
        sched.submit(_seq(served, key, deadline_s=deadline))
    sched.plan(0.0, 0.01)  # 0, 1, 2 active; 3 queued
    sched.record([StepResult(k, 0, 50 + k, None) for k in (0, 1, 2)], 0.01)
    sched.cancel(1)  # the client of 1 went away: it leaves silently
    plan = sched.plan(0.96, 0.01)
    assert sorted(plan.remove) == [1, 2]
    finals = {u.key: (u.finish, u.tokens, u.token_count) for u in plan.updates}
    assert finals == {2: ("deadline", (), 1), 3: ("deadline", (), 0)}
    assert sched.active_count == 1 and sched.queued_count == 0
    sched.drain(at_s=5.0)
    with pytest.raises(Overloaded, match="shutting down"):
        sched.submit(_seq(served, 7))
    assert sched.plan(4.0, 0.01).remove == ()
    plan = sched.plan(5.0, 0.01)
    assert plan.remove == (0,) and plan.updates[0].finish == "cancelled"
    assert sched.idle


def test_cancel_of_a_queued_request_frees_its_queue_slot(served):
    sched = Scheduler(max_batch=1, max_queue=1, retry_after_s=0.1)
    sched.submit(_seq(served, 0))
    sched.plan(0.0, 0.01)
    sched.submit(_seq(served, 1))
    sched.cancel(1)
    sched.submit(_seq(served, 2))  # the slot is free again
    assert sched.queued_count == 1


def test_tokens_wait_on_the_sequence_until_its_handler_asks_and_the_end_never_waits(served):
    """After the first hand-over a sequence's tokens are held until ``release_s``: one
    update for all of them, none in between; its last tokens go with the final at once."""
    sched = Scheduler(4, 4, 0.1)
    seq = _seq(served, 0, max_new=5)
    sched.submit(seq)
    sched.plan(0.0, 0.01)
    assert [u.tokens for u in sched.record([StepResult(0, 0, 10, None)], 0.01)] == [(10,)]
    assert seq.release_s == RELEASE_NEVER  # until the handler has sent (10,)
    assert sched.record([StepResult(0, 1, 11, None)], 0.02) == []
    seq.release_s = 0.05  # sent; the next message is due 30 ms on
    assert sched.record([StepResult(0, 2, 12, None)], 0.03) == []
    due = sched.record([StepResult(0, 3, 13, None)], 0.05)
    assert [(u.start, u.tokens, u.finish) for u in due] == [(1, (11, 12, 13), None)]
    final = sched.record([StepResult(0, 4, 14, "length")], 0.06)  # held, but the end is not
    assert [(u.start, u.tokens, u.finish, u.token_count) for u in final] == [
        (4, (14,), "length", 5)
    ]


def test_a_deadline_final_carries_the_held_tokens(served):
    sched = Scheduler(4, 4, 0.1, deadline_margin_s=0.05)
    seq = _seq(served, 0, deadline_s=1.0)
    sched.submit(seq)
    sched.plan(0.0, 0.01)
    sched.record([StepResult(0, 0, 10, None)], 0.01)
    sched.record([StepResult(0, 1, 11, None), StepResult(0, 2, 12, None)], 0.02)
    (final,) = sched.plan(0.99, 0.01).updates
    assert (final.start, final.tokens, final.finish, final.token_count) == (
        1,
        (11, 12),
        "deadline",
        3,
    )
