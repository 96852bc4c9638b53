"""The decoding engine of one served model: the thread that runs the scheduler's plans.

gRPC handler threads only ``submit`` a validated job and read its ``Stream``; this one thread
per model calls the ONNX sessions (``DecodeBatch.add`` and ``step``), so every active sequence
advances in the same batched ``session.run`` and sequences join and leave between steps.
The scheduler state is shared under one lock; the model runs outside it, so submitting never
waits for a step.

If the runtime raises, only the sequences of that call fail (reported as an exception on their
streams; the servicer answers INTERNAL) and the batch is rebuilt, so the replica keeps serving
everyone else.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable

from tandem.cloud.metrics import Metrics
from tandem.cloud.scheduler import FINISH_LENGTH, Plan, Scheduler, Sequence, Update
from tandem.cloud.validation import Job
from tandem.runtime.seq2seq import Seq2Seq

log = logging.getLogger(__name__)

_STEP_EMA_WEIGHT = 0.2
"""Weight of the newest iteration in the step-time estimate used for deadline margins."""


class ModelFailure(Exception):
    """The model runtime raised while decoding this stream's sequence; a bug or a broken
    bundle, never the client's fault (INTERNAL). Not a ``TandemError`` on purpose."""


class Stream:
    """One request's side of the engine: updates arrive on ``events`` in order.

    Items are ``Update`` (the last one has ``finish`` set), a ``ModelFailure``, or None when
    the engine forgot the stream (it was cancelled). After the first update, the next comes
    only once the handler asks for it (``Engine.release``) or the stream ends, so a handler
    blocked on ``events`` wakes once per message it sends.
    """

    def __init__(self, key: int, request_id: str, seq: Sequence | None = None) -> None:
        self.key = key
        self.request_id = request_id
        self.events: queue.SimpleQueue[Update | ModelFailure | None] = queue.SimpleQueue()
        self.seq = seq
        """The scheduler's record of this request (None: answered without the model)."""


class Engine:
    """Continuous batching for one model bundle, on its own thread."""

    def __init__(
        self,
        model: Seq2Seq,
        scheduler: Scheduler,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model = model
        self.name = model.manifest.name
        self._scheduler = scheduler
        self._metrics = metrics
        self._clock = clock
        self._batch = model.new_batch()
        self._streams: dict[int, Stream] = {}
        self._keys = itertools.count()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._stopping = False
        self._step_s = 0.0
        self._stages = metrics.stages(self.name)
        # Children resolved once: ``labels()`` takes a lock and builds a key on every call,
        # and the engine thread would pay it several times per iteration.
        self._active_gauge = metrics.active.labels(self.name)
        self._queued_gauge = metrics.queued.labels(self.name)
        self._queue_seconds = metrics.queue_seconds.labels(self.name)
        self._batch_size = metrics.batch_size.labels(self.name)
        self._step_seconds = metrics.step_seconds.labels(self.name)
        self._thread = threading.Thread(target=self._run, name=f"engine-{self.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    # -- handler side ------------------------------------------------------------------------

    def submit(self, job: Job, arrived_s: float, deadline_s: float) -> Stream:
        """Queue ``job``; raises ``Overloaded`` when the queue is full or the engine drains."""
        key = next(self._keys)
        if job.complete:
            stream = Stream(key, job.request_id)
            # The prefix already fills max_new_tokens: answer without touching the model.
            now = self._clock()
            stream.events.put(
                Update(
                    stream.key,
                    job.start,
                    job.lead,
                    FINISH_LENGTH,
                    token_count=len(job.params.prefix),
                    queue_ms=(now - arrived_s) * 1000.0,
                )
            )
            return stream
        seq = Sequence(key, job, arrived_s, deadline_s, submitted_s=self._clock())
        stream = Stream(key, job.request_id, seq)
        with self._lock:
            self._scheduler.submit(seq)
            self._streams[stream.key] = stream
            self._queued_gauge.set(self._scheduler.queued_count)
            self._wake.notify()
        return stream

    def release(self, stream: Stream, after_s: float) -> None:
        """The handler sent what it was handed: hand it the tokens decoded from ``after_s``
        seconds on (the hold between two messages), at the first step after that.

        No lock: one float stored, which the engine thread reads once per iteration; the
        engine only overwrites it when it hands tokens over, and the handler only calls this
        after receiving them, so neither write is ever lost.
        """
        if stream.seq is not None:
            stream.seq.release_s = self._clock() + after_s

    def cancel(self, stream: Stream) -> None:
        """The client is gone; its sequence leaves the batch before the next step."""
        with self._lock:
            if self._streams.pop(stream.key, None) is None:
                return  # already finished
            self._scheduler.cancel(stream.key)
            self._wake.notify()
        stream.events.put(None)

    def drain(self, at_s: float) -> None:
        """Refuse new work; sequences still running at ``at_s`` end with CANCELLED."""
        with self._lock:
            self._scheduler.drain(at_s)
            self._wake.notify()

    def stop(self, timeout_s: float = 5.0) -> None:
        with self._lock:
            self._stopping = True
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    @property
    def active(self) -> int:
        """Sequences in the batch now; read without the lock (a length, for pacing)."""
        return self._scheduler.active_count

    @property
    def load(self) -> tuple[int, int]:
        """(active sequences, queued requests) right now."""
        with self._lock:
            return self._scheduler.active_count, self._scheduler.queued_count

    # -- engine thread -----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._lock:
                while self._scheduler.idle and not self._stopping:
                    self._wake.wait()
                if self._stopping:
                    return
                started = self._clock()
                plan_ns = time.perf_counter_ns()
                plan = self._scheduler.plan(started, self._step_s)
                self._deliver(plan.updates)
                plan_ns = time.perf_counter_ns() - plan_ns
            try:
                self._iterate(plan, started, plan_ns)
            except Exception:  # a bug in this loop must not leave clients waiting forever
                log.exception("engine iteration failed", extra={"model": self.name})
                self._fail_all("engine iteration failed")

    def _iterate(self, plan: Plan, started: float, plan_ns: int = 0) -> None:
        join_ns = time.perf_counter_ns()
        for key in plan.remove:
            self._batch.remove(key)
        results = []
        failed: list[tuple[int, str]] = []
        queue_stage = self._stages["queue"]
        for seq in plan.admit:
            self._queue_seconds.observe(started - seq.arrived_s)
            submitted = seq.arrived_s if seq.submitted_s is None else seq.submitted_s
            queue_stage.observe(started - submitted)
        try:
            # All joiners in one cache-init run and one prefill run per prefix length.
            results += self._batch.add_many(
                [(seq.key, seq.job.hidden, seq.job.params) for seq in plan.admit]
            )
        except Exception:
            # add_many changes nothing when it raises: join one by one to find the culprit,
            # so one bad sequence never fails the others that arrived with it.
            for seq in plan.admit:
                try:
                    results += self._batch.add(seq.key, seq.job.hidden, seq.job.params)
                except Exception as exc:
                    log.exception(
                        "model failed on join",
                        extra={"request_id": seq.job.request_id, "model": self.name},
                    )
                    failed.append((seq.key, f"{type(exc).__name__} while joining the batch"))
        step_ns = time.perf_counter_ns()
        join_ns = step_ns - join_ns
        rows = len(self._batch)
        if rows:
            try:
                results += self._batch.step()
                self._batch_size.observe(rows)
            except Exception as exc:
                keys = self._batch.keys
                log.exception(
                    "model failed on step; failing its batch",
                    extra={"model": self.name, "rows": rows},
                )
                failed += [(k, f"{type(exc).__name__} in a batched step") for k in keys]
                self._batch = self.model.new_batch()
        done = self._clock()
        emit_ns = time.perf_counter_ns()
        step_ns = emit_ns - step_ns
        elapsed = done - started
        self._step_s = (
            elapsed
            if self._step_s == 0
            else (_STEP_EMA_WEIGHT * elapsed + (1 - _STEP_EMA_WEIGHT) * self._step_s)
        )
        self._step_seconds.observe(elapsed)
        with self._lock:
            updates = self._scheduler.record(results, done)
            reasons = dict(failed)
            self._deliver(updates)
            self._fail(self._scheduler.fail(reasons), reasons)
        emit_ns = time.perf_counter_ns() - emit_ns + plan_ns
        # Observed outside the lock: handlers submitting never wait on the timers.
        if plan.admit or plan.remove:
            self._stages["join"].observe(join_ns / 1e9)
        if rows:
            self._stages["step"].observe(step_ns / 1e9)
        self._stages["emit"].observe(emit_ns / 1e9)

    def _deliver(self, updates) -> None:
        """Hand updates to their streams (lock held); finished streams are forgotten."""
        for update in updates:
            stream = self._streams.get(update.key)
            if stream is None:
                continue
            if update.finish is not None:
                del self._streams[update.key]
            stream.events.put(update)
        self._active_gauge.set(self._scheduler.active_count)
        self._queued_gauge.set(self._scheduler.queued_count)

    def _fail(self, sequences: list[Sequence], reasons: dict[int, str] | str) -> None:
        """Tell the streams of ``sequences`` their model call raised (lock held); tokens
        decoded before go first, so the client can resume from them."""
        for seq in sequences:
            self._metrics.model_errors.labels(self.name).inc()
            stream = self._streams.pop(seq.key, None)
            if stream is None:
                continue
            if seq.held:
                stream.events.put(self._scheduler.hand_over(seq))
            reason = reasons if isinstance(reasons, str) else reasons[seq.key]
            stream.events.put(ModelFailure(reason))

    def _fail_all(self, reason: str) -> None:
        with self._lock:
            self._fail(self._scheduler.fail(self._scheduler.active_keys), reason)
        self._batch = self.model.new_batch()
