# cython: language_level=3
"""Placeholder; kernels arrive with the kernel module."""
