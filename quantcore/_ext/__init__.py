"""Compiled Cython kernels (built by `pip install`). Use them through `quantcore.kernels`, which
validates arguments once; the kernels themselves trust their inputs."""
