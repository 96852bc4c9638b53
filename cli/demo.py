"""The main job: a cloud service and an edge agent on loopback, a stream of requests, and the
cloud killed halfway — every request is still answered, identically to a local decode.

What it proves, in order: (1) the policy sends traffic to the cloud when the cloud is faster;
(2) killing the cloud process (SIGKILL, mid-stream) loses nothing — the cut request resumes
locally from the tokens it already had, later ones fall back or route locally; (3) once the
cloud is back, the breaker's probe and the RTT pings bring traffic back to it. Each answer is
compared with a local reference decode of the same input.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tandem.defaults import bundle_path
from tandem.edge.agent import Agent
from tandem.edge.client import EdgeClient
from tandem.edge.config import BreakerSettings, CloudSettings, EdgeConfig, validate
from tandem.edge.server import create_edge_server
from tandem.emulate.inputs import sample_inputs
from tandem.emulate.processes import CloudProcess, free_port
from tandem.errors import TandemError
from tandem.policy import EstimatorConfig, PolicyConfig
from tandem.runtime.seq2seq import Seq2Seq
from tandem.sim.runner import DEVICE_SPEED_FACTOR

#: The demo's device is priced as this many times slower than the server it runs on: the
#: simulator's default scenario (a mid-range phone CPU against a server core;
#: ``docs/simulation.md``, "The simulated world (default scenario)", gives the rationale).
DEMO_DEVICE_SPEED_FACTOR = DEVICE_SPEED_FACTOR


@dataclass
class DemoRecord:
    index: int
    phase: str
    text: str
    target: str | None
    output: str = ""
    route: str = ""
    reason: str = ""
    fallbacks: list[str] = field(default_factory=list)
    total_ms: float = 0.0
    answered: bool = False
    matches: bool = False
    error: str = ""


@dataclass
class DemoSummary:
    requests: int = 0
    answered: int = 0
    local: int = 0
    cloud: int = 0
    fallbacks: int = 0
    mismatches: int = 0
    cloud_kills: int = 0
    records: list[DemoRecord] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "requests": self.requests,
            "answered": self.answered,
            "local": self.local,
            "cloud": self.cloud,
            "fallbacks": self.fallbacks,
            "mismatches": self.mismatches,
            "cloud_kills": self.cloud_kills,
        }


def run_demo(
    requests: int = 24,
    bundle: str | None = None,
    seed: int = 0,
    report: Callable[[DemoRecord], None] | None = None,
    announce: Callable[[str], None] | None = None,
) -> DemoSummary:
    say = announce or (lambda _msg: None)
    path = bundle_path(bundle)
    reference = Seq2Seq.load(path)
    languages = sorted(reference.manifest.languages)
    inputs = sample_inputs(requests, languages, seed)
    summary = DemoSummary(requests=requests)
    with tempfile.TemporaryDirectory(prefix="tandem-demo-") as tmp:
        tmp_dir = Path(tmp)
        port = free_port()
        cloud = CloudProcess(path, port, tmp_dir / "cloud.log")
        say(f"starting the cloud decoder service on 127.0.0.1:{port}")
        try:
            summary = _run_with_cloud(
                cloud, path, tmp_dir, port, reference, inputs, summary, say, report
            )
        finally:
            cloud.stop()  # whatever failed, never leave the child service running
    return summary


def _run_with_cloud(
    cloud: CloudProcess,
    path: Path,
    tmp_dir: Path,
    port: int,
    reference: Seq2Seq,
    inputs: list[tuple[str, str | None]],
    summary: DemoSummary,
    say: Callable[[str], None],
    report: Callable[[DemoRecord], None] | None,
) -> DemoSummary:
    """The demo proper; the caller stops the cloud child whatever happens here."""
    requests = len(inputs)
    cloud.start()
    config = validate(
        EdgeConfig(
            bundle=str(path),
            socket=str(tmp_dir / "edge.sock"),
            device_speed_factor=DEMO_DEVICE_SPEED_FACTOR,
            # The link is loopback: a LAN-class uplink prior instead of the cellular
            # default, so the first requests are not priced as if on 1 Mbit/s; the agent
            # replaces the prior with measured uploads from the first cloud call on.
            policy=PolicyConfig(
                policy="cost_model",
                estimators=EstimatorConfig(prior_uplink_bps=50e6, prior_rtt_ms=5.0),
            ),
            cloud=CloudSettings(
                addresses=(f"127.0.0.1:{port}",),
                ping_interval_s=0.5,
                first_token_timeout_s=1.0,
                deadline_s=5.0,
                breaker=BreakerSettings(failure_threshold=2, reset_timeout_s=1.0),
            ),
        )
    )
    agent = Agent(config, model=reference)
    server, where = create_edge_server(agent)
    say(
        f"edge agent listening on {where['socket']}; the device is priced "
        f"{DEMO_DEVICE_SPEED_FACTOR:g}x slower than the server"
    )
    kill_at = requests // 3
    restart_at = (2 * requests) // 3
    try:
        with EdgeClient(where["socket"], timeout_s=60.0) as client:
            for index, (text, target) in enumerate(inputs):
                phase = "cloud up" if index < kill_at else "cloud down"
                if index >= restart_at:
                    phase = "cloud back"
                if index == restart_at:
                    say("restarting the cloud service")
                    cloud.start()
                    time.sleep(1.5)  # let the pings and the breaker's probe notice
                record = DemoRecord(index, phase, text, target)
                killer = None
                if index == kill_at:
                    say("killing the cloud service (SIGKILL) while this request streams")
                    killer = _Killer(cloud, summary)
                _ask(client, reference, record, killer)
                summary.records.append(record)
                if record.answered:
                    summary.answered += 1
                    summary.local += record.route == "local"
                    summary.cloud += record.route == "cloud"
                    summary.fallbacks += bool(record.fallbacks)
                if not record.matches:
                    summary.mismatches += 1
                if report:
                    report(record)
    finally:
        server.stop(grace=1.0)
        agent.close()
    return summary


class _Killer:
    """Kills the cloud child once, when the first piece of the chosen request arrives."""

    def __init__(self, cloud: CloudProcess, summary: DemoSummary) -> None:
        self.cloud, self.summary, self.done = cloud, summary, False

    def on_piece(self) -> None:
        if not self.done:
            self.done = True
            self.cloud.kill()
            self.summary.cloud_kills += 1


def _ask(client: EdgeClient, reference: Seq2Seq, record: DemoRecord, killer) -> None:
    expected = reference.generate(record.text, target=record.target)
    want = [t for t in expected.ids if t != reference.manifest.tokens.eos]
    try:
        for event in client.stream(record.text, record.target):
            if event.WhichOneof("event") == "piece":
                if killer is not None and event.piece.ids:
                    # Kill from another thread so this stream keeps reading during the crash.
                    threading.Thread(target=killer.on_piece).start()
                    killer = None
                continue
            f = event.final
            record.answered = True
            record.output = f.text
            record.route, record.reason = f.route, f.reason
            record.fallbacks = list(f.fallbacks)
            record.total_ms = f.total_ms
            record.matches = list(f.ids) == want and f.text == expected.text
    except TandemError as exc:
        record.error = str(exc)
    if killer is not None and not killer.done:  # the request finished before any piece
        killer.on_piece()


__all__ = ["DemoRecord", "DemoSummary", "run_demo"]
