"""Nodes that carry their code: the artifact contract, its store, the sandboxed worker that runs
it and the egress proxy it reaches the network through (docs/decisions/0070-node-artifacts.md)."""
