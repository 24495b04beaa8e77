# DGX-1 (8x V100), 8 x 120 = 960 (SPEC section 7). Source it, then launch: see docs/launching.md.
export DGXSYSTEM=DGX1
export DGXNNODES=1
export DGXNGPU=8
export WALLTIME=00:40:00
export DS_CONFIG=ds_configs/dgx1_8x120_fp16.json
export EXTRA_PARAMS="--lr_per_32 2.92e-3 --weight_decay 1.6e-4 --warmup_iters 650 --decay_epochs 44,55 --epochs 60"
