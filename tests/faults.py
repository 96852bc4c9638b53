"""Server-side fault injection for tests: real decoding, made slow on purpose."""

from __future__ import annotations

import time

from tandem.runtime.bundle import load_bundle
from tandem.runtime.decoding import DecodeBatch
from tandem.runtime.seq2seq import Seq2Seq


class SlowBatch(DecodeBatch):
    """A real decode batch whose steps take ``delay_s`` longer: a slow or overloaded cloud."""

    delay_s = 0.0
    first_delay_s = 0.0

    def add_many(self, *args, **kwargs):  # add() goes through add_many too
        if self.first_delay_s:
            time.sleep(self.first_delay_s)
        return super().add_many(*args, **kwargs)

    def step(self):
        if self.delay_s:
            time.sleep(self.delay_s)
        return super().step()


class SlowModel(Seq2Seq):
    """The same bundle, decoded with ``SlowBatch`` (fault injection on the server side)."""

    def __init__(self, path, delay_s: float = 0.0, first_delay_s: float = 0.0) -> None:
        super().__init__(load_bundle(path))
        self.delay_s, self.first_delay_s = delay_s, first_delay_s

    def new_batch(self):
        batch = SlowBatch(self.bundle.sessions, self.manifest)
        batch.delay_s, batch.first_delay_s = self.delay_s, self.first_delay_s
        return batch
