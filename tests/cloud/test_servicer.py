"""The servicer's stream relay: updates that piled up go out as one message, in order."""

from __future__ import annotations

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
