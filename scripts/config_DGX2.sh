# DGX-2H (16x V100), 16 x 56 = 896 (SPEC section 7). Source it, then launch: see docs/launching.md.
export DGXSYSTEM=DGX2
export DGXNNODES=1
export DGXNGPU=16
export WALLTIME=00:30:00
export DS_CONFIG=ds_configs/dgx2h_16x56_fp16.json
export EXTRA_PARAMS="--lr_per_32 3.2e-3 --weight_decay 1.3e-4 --warmup_iters 650 --decay_epochs 44,55 --epochs 60"
