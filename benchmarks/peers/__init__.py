"""Peer implementations of the benchmark's workload (Faust, Quix Streams), run as their own processes.

Nothing here is imported by the harness or the tests: each peer is started as a subprocess with a
JSON config (`benchmarks.peers.common.PeerConfig` fields), so a missing peer package only fails
that peer's run.
"""
