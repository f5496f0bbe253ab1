"""Query-tail union: pairs of query clusters' last, partly empty tiles packed into one tile over the union of their
key lists (the rule and its cost model: ``reference.py``)."""

from svg2core.ops.tail_union.reference import (
    FIXED_KEY_ROWS,
    tail_pairs_reference,
    tail_union_reference,
    union_clusters,
)
from svg2core.ops.tail_union.tail_union import tail_union

__all__ = ["FIXED_KEY_ROWS", "tail_pairs_reference", "tail_union", "tail_union_reference", "union_clusters"]
