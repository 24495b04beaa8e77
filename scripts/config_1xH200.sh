# one H200 or H100, 456 x 2 accumulation = 912 (SPEC section 7). Source it, then launch: see docs/launching.md.
export DGXSYSTEM=1xH200
export DGXNNODES=1
export DGXNGPU=1
export WALLTIME=01:00:00
export DS_CONFIG=ds_configs/h200_1x912_bf16.json
export EXTRA_PARAMS="--lr_per_32 3.2e-3 --weight_decay 1.3e-4 --warmup_iters 650 --decay_epochs 44,55 --epochs 60"
