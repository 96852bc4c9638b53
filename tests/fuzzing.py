"""Shared hypothesis strategies for the fuzz tests of both services."""

from __future__ import annotations

from hypothesis import strategies as st


@st.composite
def mutated(draw, valid: st.SearchStrategy) -> bytes:
    """A serialized valid-looking message with a few bytes flipped, cut, or inserted: close
    enough to the format that the parser gets deep before it fails (or, sometimes, succeeds)."""
    data = bytearray(draw(valid).SerializeToString())
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["flip", "cut", "insert"]))
        if op == "flip" and at < len(data):
            data[at] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del data[at : at + draw(st.integers(1, 16))]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)
