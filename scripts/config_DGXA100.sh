# DGX A100 (8x A100), 8 x 114 = 912 (SPEC section 7). Source it, then launch: see docs/launching.md.
export DGXSYSTEM=DGXA100
export DGXNNODES=1
export DGXNGPU=8
export WALLTIME=00:30:00
export DS_CONFIG=ds_configs/dgxa100_8x114_bf16.json
export EXTRA_PARAMS="--lr_per_32 3.2e-3 --weight_decay 1.3e-4 --warmup_iters 650 --decay_epochs 44,55 --epochs 60"
