# 2x DGX A100: what Slurm and the launch scripts need. The run's own settings, its DeepSpeed JSON
# included, are in $SYSTEM_CONFIG, a --config file. Source this, then launch: see docs/launching.md.
export DGXSYSTEM=DGXA100_multi_2x8x56
export DGXNNODES=2
export DGXNGPU=8
export WALLTIME=00:20:00
export SYSTEM_CONFIG=configs/systems/$DGXSYSTEM.json
