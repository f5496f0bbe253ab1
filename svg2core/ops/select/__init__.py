"""Cluster scoring and top-p / fixed-density key-cluster selection: reference + Triton + wrapper."""

from svg2core.ops.select.reference import (
    KeySweep,
    cluster_logits_reference,
    select_from_logits_reference,
    select_key_clusters_reference,
    selection_in_id_order,
    selection_in_sweep_order,
    sweep_starts_reference,
    token_limits,
)
from svg2core.ops.select.select import cluster_logits, select_from_logits, select_key_clusters

__all__ = [
    "KeySweep",
    "cluster_logits",
    "cluster_logits_reference",
    "select_from_logits",
    "select_from_logits_reference",
    "select_key_clusters",
    "select_key_clusters_reference",
    "selection_in_id_order",
    "selection_in_sweep_order",
    "sweep_starts_reference",
    "token_limits",
]
