"""Cluster scoring and top-p / fixed-density key-cluster selection: reference + Triton + wrapper."""

from svg2core.ops.select.reference import (
    cluster_logits_reference,
    select_from_logits_reference,
    select_key_clusters_reference,
    selection_in_id_order,
    token_limits,
)
from svg2core.ops.select.select import cluster_logits, select_from_logits, select_key_clusters

__all__ = [
    "cluster_logits",
    "cluster_logits_reference",
    "select_from_logits",
    "select_from_logits_reference",
    "select_key_clusters",
    "select_key_clusters_reference",
    "selection_in_id_order",
    "token_limits",
]
