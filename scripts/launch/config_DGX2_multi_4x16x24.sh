# 4x DGX-2H: what Slurm and the launch scripts need. The run's own settings, its DeepSpeed JSON
# included, are in $SYSTEM_CONFIG, a --config file. Source this, then launch: see docs/launching.md.
export DGXSYSTEM=DGX2_multi_4x16x24
export DGXNNODES=4
export DGXNGPU=16
export WALLTIME=00:20:00
export SYSTEM_CONFIG=configs/systems/$DGXSYSTEM.json
