"""What the agent's tests share: driving a request to its end and reading its stream."""

from __future__ import annotations

from tandem.edge.agent import Outcome, Piece, Request


def collect(agent, request: Request) -> tuple[list[Piece], Outcome]:
    """Every piece ``agent.generate`` streams for ``request``, and its final ``Outcome``."""
    pieces, outcome = [], None
    for item in agent.generate(request):
        if isinstance(item, Outcome):
            outcome = item
        else:
            pieces.append(item)
    return pieces, outcome


def run(agent, text: str, target: str = "fr", **kwargs) -> tuple[list[Piece], Outcome]:
    """A text request through ``agent``: its pieces and its ``Outcome``."""
    return collect(agent, Request(text=text, target=target, **kwargs))


def contiguous(pieces: list[Piece]) -> list[int]:
    """The streamed ids, asserting each position came exactly once, in order."""
    ids: list[int] = []
    for piece in pieces:
        assert piece.start == len(ids), "no repeat, no gap"
        ids += piece.ids
    return ids
