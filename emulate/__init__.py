"""Real daemons over an emulated network: trace-shaped links, chaos runs, soak and fuzz support.

Where the simulator (``tandem.sim``) predicts, this package measures: it runs the real cloud
service and the real edge agent, joined through a link that follows a bandwidth trace (network
namespaces + kernel qdiscs where the machine allows, a userspace shaping relay everywhere), and
injects the faults users ask about: cloud crashes, partitions, latency spikes.
"""
