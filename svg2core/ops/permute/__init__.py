"""Permutation stage: stable sort by cluster, offsets, K/V gather (reference + Triton)."""

from svg2core.ops.permute.permute import gather_kv, key_rows_buffer, sort_by_cluster
from svg2core.ops.permute.reference import gather_rows_reference, sort_by_cluster_reference

__all__ = ["gather_kv", "gather_rows_reference", "key_rows_buffer", "sort_by_cluster", "sort_by_cluster_reference"]
