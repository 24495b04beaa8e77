# DGX-1 (8x V100): what Slurm and the launch scripts need. The run's own settings, its DeepSpeed JSON
# included, are in $SYSTEM_CONFIG, a --config file. Source this, then launch: see docs/launching.md.
export DGXSYSTEM=DGX1
export DGXNNODES=1
export DGXNGPU=8
export WALLTIME=00:40:00
export SYSTEM_CONFIG=configs/systems/$DGXSYSTEM.json
