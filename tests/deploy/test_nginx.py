"""Scale-out through an existing engine: two replicas behind Debian's nginx (deploy/nginx).

nginx balances gRPC per call over HTTP/2. Forty requests go through a real edge agent (always to
the cloud) four at a time; one replica is SIGKILLed while streams are running: it is frozen first
(SIGSTOP) for a moment, so the calls nginx hands it in that window are certainly running on it
when the kill comes (the default model decodes a whole answer in milliseconds). Every answer must
still equal a local decode of the same input (a cut stream resumes locally from its tokens; new
calls go to the live replica), both replicas must have served calls (nginx's access log names the
upstream of each), and the cloud must still answer after the kill.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tandem.defaults import bundle_path
from tandem.edge.client import EdgeClient
from tandem.emulate.inputs import sample_inputs
from tandem.emulate.processes import CloudProcess, EdgeProcess, free_port
from tandem.runtime.seq2seq import Seq2Seq

pytestmark = pytest.mark.nginx

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "deploy" / "nginx" / "tandem-cloud.conf"
REQUESTS, WORKERS, KILL_AFTER = 40, 4, 12
FREEZE_S = 0.5

NGINX_CONF = """\
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log info;
events {{ worker_connections 256; }}
http {{
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    include {tmp}/tandem-cloud.conf;
}}
"""


def example_config(listen: int, replicas: list[int], log: Path) -> str:
    """deploy/nginx/tandem-cloud.conf with our ports and log path; everything else verbatim."""
    text = EXAMPLE.read_text(encoding="utf-8")
    for old, new in (
        ("127.0.0.1:50051", f"127.0.0.1:{listen}"),
        ("127.0.0.1:50061", f"127.0.0.1:{replicas[0]}"),
        ("127.0.0.1:50062", f"127.0.0.1:{replicas[1]}"),
        ("/var/log/nginx/tandem-cloud.log", str(log)),
    ):
        assert text.count(old) == 1, f"{EXAMPLE.name} no longer has exactly one {old}"
        text = text.replace(old, new)
    return text


@pytest.fixture
def nginx(nginx_installed, tmp_path):
    def start(listen: int, replicas: list[int]) -> tuple[subprocess.Popen, Path]:
        log = tmp_path / "access.log"
        (tmp_path / "tandem-cloud.conf").write_text(example_config(listen, replicas, log))
        (tmp_path / "nginx.conf").write_text(NGINX_CONF.format(tmp=tmp_path))
        conf = ["-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")]
        check = subprocess.run(["nginx", "-t", *conf], capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stderr
        proc = subprocess.Popen(["nginx", *conf, "-g", "daemon off;"], stderr=subprocess.PIPE)
        started.append(proc)
        deadline = time.monotonic() + 20
        while not (tmp_path / "nginx.pid").exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "nginx did not start"
            time.sleep(0.05)
        return proc, log

    started: list[subprocess.Popen] = []
    yield start
    for proc in started:
        proc.terminate()
        proc.wait(timeout=10)


def test_two_replicas_behind_nginx_survive_a_sigkill(nginx, tmp_path):
    bundle = bundle_path()
    model = Seq2Seq.load(bundle)
    inputs = sample_inputs(REQUESTS, sorted(model.manifest.languages), seed=3)
    want = [model.generate(text, target=lang).text for text, lang in inputs]

    ports = [free_port(), free_port()]
    replicas = [CloudProcess(bundle, p, tmp_path / f"replica-{i}.log") for i, p in enumerate(ports)]
    edge = None
    try:
        for r in replicas:
            r.start()
        listen = free_port()
        _, access_log = nginx(listen, ports)
        sock = str(tmp_path / "edge.sock")
        edge = EdgeProcess(
            {
                "socket": sock,
                "cloud": {"addresses": [f"127.0.0.1:{listen}"]},
                "policy": {"policy": "always_cloud"},
                "metrics_port": 0,
                "max_concurrent": WORKERS,
            },
            tmp_path,
        )
        edge.start()

        lock, done, in_flight = threading.Lock(), [0], [0]
        at_kill: dict[str, int] = {}
        kill_now = threading.Event()
        answers: list = [None] * REQUESTS

        def ask(i: int) -> None:
            with lock:
                in_flight[0] += 1
            with EdgeClient(sock, timeout_s=60) as client:
                answers[i] = client.ask(inputs[i][0], target=inputs[i][1])
            with lock:
                in_flight[0] -= 1
                done[0] += 1
                if done[0] == KILL_AFTER:
                    kill_now.set()

        with ThreadPoolExecutor(WORKERS) as pool:
            futures = [pool.submit(ask, i) for i in range(REQUESTS)]
            assert kill_now.wait(120), "the first answers never came"
            os.killpg(replicas[0].pid, signal.SIGSTOP)
            time.sleep(FREEZE_S)
            with lock:
                at_kill.update(done=done[0], in_flight=in_flight[0])
            replicas[0].kill()  # SIGKILL: a crash mid-stream, not a drain
            for f in futures:
                f.result(timeout=120)
    finally:
        if edge is not None:
            edge.stop()
        for r in replicas:
            r.stop()

    assert at_kill["in_flight"] > 0, "the kill hit no running stream"
    assert [a.text for a in answers] == want  # every answer, identical to a local decode
    after = answers[at_kill["done"] + at_kill["in_flight"] :]
    assert any(a.route == "cloud" and not a.fallbacks for a in after), (
        "no cloud answer after the kill"
    )

    log = access_log.read_text()
    served = {port: len(re.findall(rf"upstream=[^ ]*127\.0\.0\.1:{port}\b", log)) for port in ports}
    assert all(n > 0 for n in served.values()), (served, log[-2000:])
    # The kill really cut calls: nginx logged calls to the killed replica that never got their
    # gRPC status (502 before any reply, or 200 with the stream cut after some tokens).
    cut = re.findall(rf"upstream=127\.0\.0\.1:{ports[0]} grpc_status=- ", log)
    assert cut, log[-2000:]
    resumed = sum(bool(a.fallbacks) for a in answers)
    print(
        f"\ncalls per replica {served}; at the kill {at_kill}; answers with a fallback {resumed}; calls cut {len(cut)}"
    )
