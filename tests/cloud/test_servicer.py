"""The servicer's stream relay: updates that piled up go out as one message, in order."""

from __future__ import annotations

import threading
import time

from tandem.cloud.engine import ModelFailure, Stream
from tandem.cloud.scheduler import Update
from tandem.cloud.servicer import _coalesce


def _stream(*items) -> Stream:
    stream = Stream(key=1, request_id="r")
    for item in items:
        stream.events.put(item)
    return stream


def test_waiting_updates_merge_into_one_chunk_up_to_the_final():
    stream = _stream(Update(1, 2, (7,)), Update(1, 3, (8,)), Update(1, 4, (), "eos", token_count=4))
    merged, carry = _coalesce(Update(1, 0, (5, 6)), stream)
    assert merged == Update(1, 0, (5, 6, 7, 8), "eos", token_count=4)
    assert carry is None and stream.events.empty()


def test_an_update_alone_is_sent_as_is():
    item = Update(1, 0, (5,))
    assert _coalesce(item, _stream()) == (item, None)


def test_tokens_go_before_a_failure_that_follows_them():
    """Tokens already decoded reach the client (it can resume from them) before the error."""
    failure = ModelFailure("boom")
    stream = _stream(Update(1, 1, (6,)), failure, Update(1, 2, (9,)))
    merged, carry = _coalesce(Update(1, 0, (5,)), stream)
    assert merged == Update(1, 0, (5, 6)) and carry is failure
    assert stream.events.qsize() == 1  # nothing after the failure was consumed


def test_finals_and_failures_pass_through():
    final = Update(1, 3, (), "length", token_count=3)
    assert _coalesce(final, _stream(Update(1, 9, (1,)))) == (final, None)
    failure = ModelFailure("x")
    assert _coalesce(failure, _stream()) == (failure, None)
    assert _coalesce(None, _stream()) == (None, None)


def test_a_hold_gathers_tokens_made_meanwhile_until_it_ends():
    """With ``hold_until``, updates waiting or arriving before then join the message."""
    stream = _stream(Update(1, 1, (6,)), Update(1, 2, (7,)))
    times = iter([0.0, 0.0, 0.0, 0.05])  # the third look finds the queue empty: wait 50 ms
    merged, carry = _coalesce(
        Update(1, 0, (5,)), stream, hold_until=0.05, clock=lambda: next(times, 1.0)
    )
    assert merged == Update(1, 0, (5, 6, 7)) and carry is None


def test_the_end_of_a_stream_is_never_held():
    final = Update(1, 1, (), "eos", token_count=1)
    stream = _stream(final)
    merged, carry = _coalesce(Update(1, 0, (5,)), stream, hold_until=1e9, clock=lambda: 0.0)
    assert merged == Update(1, 0, (5,), "eos", token_count=1) and carry is None


def test_an_expired_hold_takes_only_what_is_waiting():
    stream = _stream(Update(1, 1, (6,)))
    merged, _ = _coalesce(Update(1, 0, (5,)), stream, hold_until=5.0, clock=lambda: 10.0)
    assert merged == Update(1, 0, (5, 6))


def test_updates_made_during_a_hold_join_and_the_end_cuts_it_short():
    """Real time: a token 20 ms in joins the held message; the final 40 ms in ends the hold
    at once instead of at its 2 s limit."""
    stream = _stream()

    def engine():
        time.sleep(0.02)
        stream.events.put(Update(1, 1, (6,)))
        time.sleep(0.02)
        stream.events.put(Update(1, 2, (), "length", token_count=2))

    worker = threading.Thread(target=engine)
    worker.start()
    began = time.monotonic()
    merged, carry = _coalesce(Update(1, 0, (5,)), stream, hold_until=began + 2.0)
    worker.join()
    assert merged == Update(1, 0, (5, 6), "length", token_count=2) and carry is None
    assert time.monotonic() - began < 1.0
