"""Batched k-means over (batch x heads): reference + Triton kernels + wrapper."""

from svg2core.ops.kmeans.kmeans import (
    AssignTile,
    batched_kmeans,
    init_centroids_strided,
    kmeans_assign,
    kmeans_update,
)
from svg2core.ops.kmeans.reference import (
    init_centroids_strided_reference,
    kmeans_assign_reference,
    kmeans_reference,
    kmeans_update_reference,
)

__all__ = [
    "AssignTile",
    "batched_kmeans",
    "init_centroids_strided",
    "init_centroids_strided_reference",
    "kmeans_assign",
    "kmeans_assign_reference",
    "kmeans_reference",
    "kmeans_update",
    "kmeans_update_reference",
]
