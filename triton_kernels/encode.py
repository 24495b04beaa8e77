"""Matching and offset encoding (SPEC section 3) for a padded batch, on the GPU, so that the data path can ship raw
boxes instead of encoded targets. Reference: `ssd_ds.box_coder.encode_batch`.

Op `torch.ops.ssd_kernels.encode_batch(gt_ltrb [B,G,4], gt_labels [B,G], num_gt [B], dboxes_ltrb [A,4]) ->
(loc_t [B,A,4] fp32, labels_t [B,A] int64)`; rows g >= num_gt[b] are padding and never match. Three passes:
1. `_match_kernel`, grid (A / (BLOCK_A * _TILES_PER_PROGRAM), B): IoU of every anchor with every box in [G, BLOCK_A]
   tiles; writes each anchor's best IoU and box (first box on ties) and, per program, each box's best anchor (first
   anchor on ties).
2. `_best_anchor_kernel`, grid (B,): reduces those per-program partials to each box's best anchor over all A.
3. `_encode_kernel`, grid (A blocks, B): the forcing rule (a box's best anchor is assigned to it with IoU 2, the
   highest box index winning an anchor several boxes pick), IoU > 0.5, the matched box or, for negatives, the default
   box itself, and the offsets with variances 0.1 / 0.2.

IoU is computed with the operations of `torchvision.ops.box_iou` in the same order, with an IEEE-rounded division and
no fused multiply-add, so that matching (argmax ties, the strict 0.5 threshold) agrees with the reference exactly;
offsets agree to rounding. gt_ltrb any float dtype (read as fp32), gt_labels and num_gt integer; G <= MAX_BOXES.
No gradients.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ssd_ds.box_coder import FORCED_IOU, IOU_THRESHOLD, SCALE_WH, SCALE_XY
from triton_kernels._common import NAMESPACE, check_device

__all__ = ["MAX_BOXES", "encode_batch"]

MAX_BOXES = 256  # one [G, BLOCK_A] IoU tile per step holds every box of an image
_TILES_PER_PROGRAM = 8  # pass 1: fewer programs means fewer per-box partials for pass 2 to reduce
_MATCH_WARPS = 8  # pass 1 holds several [G, BLOCK_A] fp32 tiles: at 4 warps the G = 256 tile spills (compile_check)


@triton.jit
def _load_ltrb(ptr, idx, mask):
    """Four [N] fp32 vectors l, t, r, b of the boxes at rows idx of an [N,4] array; masked rows read [0, 0, 1, 1]."""
    l = tl.load(ptr + idx * 4 + 0, mask=mask, other=0.0).to(tl.float32)
    t = tl.load(ptr + idx * 4 + 1, mask=mask, other=0.0).to(tl.float32)
    r = tl.load(ptr + idx * 4 + 2, mask=mask, other=1.0).to(tl.float32)
    b = tl.load(ptr + idx * 4 + 3, mask=mask, other=1.0).to(tl.float32)
    return l, t, r, b


@triton.jit
def _match_kernel(
    gt_ptr, num_gt_ptr, dboxes_ptr, best_iou_ptr, best_gt_ptr, part_iou_ptr, part_anchor_ptr,
    A, G,
    BLOCK_A: tl.constexpr, BLOCK_G: tl.constexpr, TILES: tl.constexpr,
):
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    g = tl.arange(0, BLOCK_G)
    g_ok = (g < tl.load(num_gt_ptr + b)) & (g < G)
    # Padding boxes read as the unit box [0,0,1,1]: a positive area keeps every division finite.
    gl, gt, gr, gb = _load_ltrb(gt_ptr + b * G * 4, g, g_ok)
    g_area = (gr - gl) * (gb - gt)
    run_iou = tl.full((BLOCK_G,), -3.0, dtype=tl.float32)
    run_anchor = tl.zeros((BLOCK_G,), dtype=tl.int32)
    for i in range(TILES):
        a0 = (pid * TILES + i) * BLOCK_A
        a = a0 + tl.arange(0, BLOCK_A)
        a_ok = a < A
        dl, dt, dr, db = _load_ltrb(dboxes_ptr, a, a_ok)
        # torchvision.ops.box_iou, operation for operation: [BLOCK_G, BLOCK_A].
        w = tl.maximum(tl.minimum(gr[:, None], dr[None, :]) - tl.maximum(gl[:, None], dl[None, :]), 0.0)
        h = tl.maximum(tl.minimum(gb[:, None], db[None, :]) - tl.maximum(gt[:, None], dt[None, :]), 0.0)
        inter = w * h
        union = (g_area[:, None] + ((dr - dl) * (db - dt))[None, :]) - inter
        iou = tl.where(g_ok[:, None], tl.div_rn(inter, union), -1.0)  # padding never matches (reference: -1)
        tl.store(best_iou_ptr + b * A + a, tl.max(iou, axis=0), mask=a_ok)
        tl.store(best_gt_ptr + b * A + a, tl.argmax(iou, axis=0, tie_break_left=True), mask=a_ok)
        # Each box's best anchor: strict > keeps the earlier tile on ties, argmax the lower index within one.
        iou = tl.where(a_ok[None, :], iou, -2.0)
        tile_iou = tl.max(iou, axis=1)
        better = tile_iou > run_iou
        run_anchor = tl.where(better, tl.argmax(iou, axis=1, tie_break_left=True) + a0, run_anchor)
        run_iou = tl.where(better, tile_iou, run_iou)
    part = (b * tl.num_programs(0) + pid) * G + g
    tl.store(part_iou_ptr + part, run_iou, mask=g < G)
    tl.store(part_anchor_ptr + part, run_anchor, mask=g < G)


@triton.jit
def _best_anchor_kernel(
    part_iou_ptr, part_anchor_ptr, best_anchor_ptr,
    G, P,
    BLOCK_P: tl.constexpr, BLOCK_G: tl.constexpr,
):
    # Reduces the P per-program partials [BLOCK_P, BLOCK_G] at a time, keeping one [BLOCK_G] running best.
    b = tl.program_id(0).to(tl.int64)
    g = tl.arange(0, BLOCK_G)
    run_iou = tl.full((BLOCK_G,), -5.0, dtype=tl.float32)
    run_anchor = tl.zeros((BLOCK_G,), dtype=tl.int32)
    # A while loop, not `for p0 in range(0, P, BLOCK_P)`: Triton 3.6's interpreter holds a scalar argument as a
    # 1-element array, which `range` cannot take as a bound (int() of it is an error from NumPy 2.4 on); a comparison
    # with it is fine, in the interpreter and compiled alike.
    p0 = 0
    while p0 < P:
        p = tl.arange(0, BLOCK_P)
        ok = (p0 + p < P)[:, None] & (g < G)[None, :]
        part = (b * P + p0 + p[:, None]) * G + g[None, :]
        iou = tl.load(part_iou_ptr + part, mask=ok, other=-4.0)
        first = tl.argmax(iou, axis=0, tie_break_left=True)  # programs cover anchors in order: first is lowest
        anchors = tl.load(part_anchor_ptr + part, mask=ok, other=0)
        chunk_iou = tl.max(iou, axis=0)
        better = chunk_iou > run_iou  # strict: an earlier chunk keeps a tie
        run_anchor = tl.where(better, tl.sum(tl.where(p[:, None] == first[None, :], anchors, 0), axis=0), run_anchor)
        run_iou = tl.where(better, chunk_iou, run_iou)
        p0 += BLOCK_P
    tl.store(best_anchor_ptr + b * G + g, run_anchor, mask=g < G)


@triton.jit
def _encode_kernel(
    gt_ptr, gt_labels_ptr, num_gt_ptr, dboxes_ptr, best_iou_ptr, best_gt_ptr, best_anchor_ptr, loc_t_ptr, labels_t_ptr,
    A, G,
    FORCED_IOU: tl.constexpr, IOU_THRESHOLD: tl.constexpr, SCALE_XY: tl.constexpr, SCALE_WH: tl.constexpr,
    BLOCK_A: tl.constexpr, BLOCK_G: tl.constexpr,
):
    b = tl.program_id(1).to(tl.int64)
    a = tl.program_id(0) * BLOCK_A + tl.arange(0, BLOCK_A)
    a_ok = a < A
    row = b * A + a
    g = tl.arange(0, BLOCK_G)
    g_ok = (g < tl.load(num_gt_ptr + b)) & (g < G)
    best_anchor = tl.load(best_anchor_ptr + b * G + g, mask=g_ok, other=-1)
    # Forcing rule: the highest box index whose best anchor is a wins a.
    forced = tl.max(tl.where(best_anchor[:, None] == a[None, :], g[:, None], -1), axis=0)
    is_forced = forced >= 0
    best_gt = tl.where(is_forced, forced, tl.load(best_gt_ptr + row, mask=a_ok, other=0))
    best_iou = tl.where(is_forced, FORCED_IOU, tl.load(best_iou_ptr + row, mask=a_ok, other=0.0))
    pos = a_ok & (best_iou > IOU_THRESHOLD)

    dl, dt, dr, db = _load_ltrb(dboxes_ptr, a, a_ok)
    ml, mt, mr, mb = _load_ltrb(gt_ptr + b * G * 4, best_gt, pos)
    # Negatives take the default box itself as target, so their offsets are exactly 0 (as in the reference).
    ml, mt, mr, mb = tl.where(pos, ml, dl), tl.where(pos, mt, dt), tl.where(pos, mr, dr), tl.where(pos, mb, db)
    label = tl.load(gt_labels_ptr + b * G + best_gt, mask=pos, other=0)
    # ltrb -> cxcywh as torchvision.ops.box_convert does, then SPEC section 3's offsets.
    dw, dh = dr - dl, db - dt
    tl.store(loc_t_ptr + row * 4 + 0, ((ml + mr) * 0.5 - (dl + dr) * 0.5) / (SCALE_XY * dw), mask=a_ok)
    tl.store(loc_t_ptr + row * 4 + 1, ((mt + mb) * 0.5 - (dt + db) * 0.5) / (SCALE_XY * dh), mask=a_ok)
    tl.store(loc_t_ptr + row * 4 + 2, tl.log((mr - ml) / dw) / SCALE_WH, mask=a_ok)
    tl.store(loc_t_ptr + row * 4 + 3, tl.log((mb - mt) / dh) / SCALE_WH, mask=a_ok)
    tl.store(labels_t_ptr + row, label.to(tl.int64), mask=a_ok)


def _check_shapes(gt_ltrb, gt_labels, num_gt, dboxes_ltrb) -> None:
    B, G = gt_ltrb.shape[:2] if gt_ltrb.dim() == 3 else (-1, -1)
    if not (gt_ltrb.shape == (B, G, 4) and gt_labels.shape == (B, G) and num_gt.shape == (B,)):
        raise ValueError(
            "encode_batch: want gt_ltrb [B,G,4], gt_labels [B,G], num_gt [B]; got "
            f"{tuple(gt_ltrb.shape)}, {tuple(gt_labels.shape)}, {tuple(num_gt.shape)}"
        )
    if dboxes_ltrb.dim() != 2 or dboxes_ltrb.shape[1] != 4:
        raise ValueError(f"encode_batch: want dboxes_ltrb [A,4], got {tuple(dboxes_ltrb.shape)}")
    if G > MAX_BOXES:
        raise ValueError(f"encode_batch: G = {G} boxes per image exceeds MAX_BOXES = {MAX_BOXES}")


def _launch(gt_ltrb, gt_labels, num_gt, dboxes_ltrb):
    """The three passes (the body of `encode_batch`, also what `compile_check` compiles)."""
    _check_shapes(gt_ltrb, gt_labels, num_gt, dboxes_ltrb)
    check_device("encode_batch", gt_ltrb, gt_labels, num_gt, dboxes_ltrb)
    B, G, _ = gt_ltrb.shape
    A = dboxes_ltrb.shape[0]
    dev = dboxes_ltrb.device
    loc_t = torch.empty(B, A, 4, device=dev, dtype=torch.float32)
    labels_t = torch.empty(B, A, device=dev, dtype=torch.int64)
    if B * A == 0:
        return loc_t, labels_t
    if G == 0:  # one padding row keeps every pointer valid; num_gt is 0, so nothing matches
        gt_ltrb, gt_labels, G = gt_ltrb.new_zeros(B, 1, 4), gt_labels.new_zeros(B, 1), 1
    gt_ltrb, gt_labels, num_gt = gt_ltrb.contiguous(), gt_labels.contiguous(), num_gt.contiguous()
    dboxes_ltrb = dboxes_ltrb.float().contiguous()
    block_g = max(2, triton.next_power_of_2(G))
    block_a = max(16, 4096 // block_g)  # a 4096-value IoU tile
    programs = triton.cdiv(A, block_a * _TILES_PER_PROGRAM)
    best_iou = torch.empty(B, A, device=dev, dtype=torch.float32)
    best_gt = torch.empty(B, A, device=dev, dtype=torch.int32)
    part_iou = torch.empty(B, programs, G, device=dev, dtype=torch.float32)
    part_anchor = torch.empty(B, programs, G, device=dev, dtype=torch.int32)
    best_anchor = torch.empty(B, G, device=dev, dtype=torch.int32)
    # enable_fp_fusion=False: no fused multiply-add, so IoUs and offsets round like torch's separate ops.
    _match_kernel[(programs, B)](
        gt_ltrb, num_gt, dboxes_ltrb, best_iou, best_gt, part_iou, part_anchor, A, G,
        BLOCK_A=block_a, BLOCK_G=block_g, TILES=_TILES_PER_PROGRAM, num_warps=_MATCH_WARPS, enable_fp_fusion=False,
    )
    _best_anchor_kernel[(B,)](
        part_iou, part_anchor, best_anchor, G, programs,
        BLOCK_P=min(triton.next_power_of_2(programs), max(1, 4096 // block_g)), BLOCK_G=block_g, num_warps=4,
    )
    _encode_kernel[(triton.cdiv(A, block_a), B)](
        gt_ltrb, gt_labels, num_gt, dboxes_ltrb, best_iou, best_gt, best_anchor, loc_t, labels_t, A, G,
        FORCED_IOU=FORCED_IOU, IOU_THRESHOLD=IOU_THRESHOLD, SCALE_XY=SCALE_XY, SCALE_WH=SCALE_WH,
        BLOCK_A=block_a, BLOCK_G=block_g, num_warps=4, enable_fp_fusion=False,
    )
    return loc_t, labels_t


@torch.library.custom_op(f"{NAMESPACE}::encode_batch", mutates_args=())
def encode_batch(
    gt_ltrb: torch.Tensor, gt_labels: torch.Tensor, num_gt: torch.Tensor, dboxes_ltrb: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded batch -> (loc_t [B,A,4] fp32 offsets, labels_t [B,A] int64; 0 = background) (Triton)."""
    return _launch(gt_ltrb, gt_labels, num_gt, dboxes_ltrb)


@encode_batch.register_fake
def _encode_batch_fake(gt_ltrb, gt_labels, num_gt, dboxes_ltrb):
    _check_shapes(gt_ltrb, gt_labels, num_gt, dboxes_ltrb)
    check_device("encode_batch", gt_ltrb, gt_labels, num_gt, dboxes_ltrb)  # fake tensors too: fail as a GPU run would
    B, A = gt_ltrb.shape[0], dboxes_ltrb.shape[0]
    return dboxes_ltrb.new_empty((B, A, 4), dtype=torch.float32), dboxes_ltrb.new_empty((B, A), dtype=torch.int64)

