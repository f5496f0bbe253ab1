"""Variable-block sparse flash attention over (query cluster, selected key clusters) pairs."""

from .reference import sparse_attention_mask, sparse_attention_reference
from .wrapper import KernelConfig, default_config, key_sweep_layout, sparse_attention

__all__ = [
    "KernelConfig",
    "default_config",
    "key_sweep_layout",
    "sparse_attention",
    "sparse_attention_mask",
    "sparse_attention_reference",
]
