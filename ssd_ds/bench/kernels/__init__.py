"""The Triton kernels against their torch references, eager and compiled, one module per op (README.md here)."""
