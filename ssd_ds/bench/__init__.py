"""Benchmarks that compare against a baseline measured in the same run and print ratios.

`python -m ssd_ds.bench WHAT [flags]`, one module per WHAT (each module's docstring says what it times and how):
  train    the training step at the trainer's configuration against fp32 NCHW eager (`train.py`)
  data     the two input paths against torchvision's SSD preset, and the CPU cores each needs (`data.py`)
  eval     the COCOeval backends, and the post-processing per image against batched (`eval.py`)
  loss, decode, encode
           the Triton kernels against their torch references, eager and compiled, on a CUDA GPU; results in CSV
           (`kernels/`, its README). Each also runs alone: `python -m ssd_ds.bench.kernels.loss` and so on.
"""
