"""Query-tile rebalancing: a few query rows moved between clusters so that fewer query tiles are partly empty
(reference; the Triton stage is not built yet, docs/benchmarks/NOTES_sparse_attn.md v20)."""

from svg2core.ops.rebalance.reference import cluster_sizes, donors_and_room, rebalance_reference

__all__ = ["cluster_sizes", "donors_and_room", "rebalance_reference"]
