# one H200 or H100: what Slurm and the launch scripts need. The run's own settings, its DeepSpeed JSON
# included, are in $SYSTEM_CONFIG, a --config file. Source this, then launch: see docs/launching.md.
export DGXSYSTEM=1xH200
export DGXNNODES=1
export DGXNGPU=1
export WALLTIME=01:00:00
export SYSTEM_CONFIG=configs/systems/$DGXSYSTEM.json
