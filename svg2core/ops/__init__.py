"""Triton operators of svg2core; each folder holds a torch reference, the kernels and a wrapper."""
