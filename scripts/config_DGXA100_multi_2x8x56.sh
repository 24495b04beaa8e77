# 2x DGX A100, 16 x 56 = 896 (SPEC section 7). Source it, then launch: see docs/launching.md.
export DGXSYSTEM=DGXA100_multi_2x8x56
export DGXNNODES=2
export DGXNGPU=8
export WALLTIME=00:20:00
export DS_CONFIG=ds_configs/2xdgxa100_16x56_bf16.json
export EXTRA_PARAMS="--lr_per_32 3.2e-3 --weight_decay 1.3e-4 --warmup_iters 650 --decay_epochs 44,55 --epochs 60"
