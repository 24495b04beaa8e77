# one 8-GPU node (H100/H200/A100): what Slurm and the launch scripts need. The run's own settings, its DeepSpeed JSON
# included, are in $SYSTEM_CONFIG, a --config file. Source this, then launch: see docs/launching.md.
export DGXSYSTEM=8xGPU
export DGXNNODES=1
export DGXNGPU=8
export WALLTIME=00:30:00
export SYSTEM_CONFIG=configs/systems/$DGXSYSTEM.json
