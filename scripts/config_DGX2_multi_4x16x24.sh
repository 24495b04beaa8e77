# 4x DGX-2H, 64 x 24 = 1536 (SPEC section 7). Source it, then launch: see docs/launching.md.
export DGXSYSTEM=DGX2_multi_4x16x24
export DGXNNODES=4
export DGXNGPU=16
export WALLTIME=00:20:00
export DS_CONFIG=ds_configs/4xdgx2h_64x24_fp16.json
export EXTRA_PARAMS="--lr_per_32 2.9e-3 --weight_decay 1.7e-4 --warmup_iters 850 --decay_epochs 44,55 --epochs 70"
