"""Scale-out: identical stateless replicas behind client-side round_robin share the load."""

from __future__ import annotations

import collections
import json

import grpc
from cloud_helpers import collect, expected_ids, request

from tandem.v1 import decoder_pb2_grpc


def test_two_replicas_behind_round_robin(serve, model):
    replicas = [serve(replica_id=f"replica-{i}") for i in range(2)]
    target = "ipv4:" + ",".join(f"127.0.0.1:{r.port}" for r in replicas)
    service_config = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})
    channel = grpc.insecure_channel(target, options=[("grpc.service_config", service_config)])
    client = decoder_pb2_grpc.DecoderStub(channel)
    answered = collections.Counter()
    src = [5, 6, 7, 8, 1]
    want = expected_ids(model, src, max_new_tokens=8)[0]
    for _ in range(10):
        ids, final = collect(client, request(model, src, max_new_tokens=8))
        assert ids == want  # any replica gives the same answer
        answered[final.replica_id] += 1
    assert set(answered) == {"replica-0", "replica-1"}
    assert min(answered.values()) >= 3

    # A replica going away: the client keeps working on the other one.
    replicas[0].drain(0.5)
    for _ in range(4):
        ids, final = collect(client, request(model, src, max_new_tokens=8))
        assert final.replica_id == "replica-1" and ids == want
