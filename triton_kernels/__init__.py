"""Triton kernels for SSD: box decoding (`decode`), the loss with hard negative mining (`loss`) and box matching
and encoding (`encode`), one file per op with its `torch.library` registration.

Import-light on purpose: importing this package loads neither Triton nor any kernel. The trainer picks each op's
backend through `ssd_ds.device_ops` (`resolve_backend`, `ssd_loss_fn`, `decode_scores_fn`, `encode_fn`), which
imports a kernel module only when its Triton backend is chosen. A kernel module imports from ssd_ds only the constants
it must agree with (ssd_ds.box_coder, ssd_ds.loss); its torch reference lives there too, and the tests compare the two.
"""
