from ssd_ds.bench.train import main
from ssd_ds.cli import run_cli

run_cli(main)
