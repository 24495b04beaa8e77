"""`python -m ssd_ds.bench WHAT [flags]`: one subcommand per benchmark module, its flags that module's."""

from __future__ import annotations

import argparse

from ssd_ds import bench
from ssd_ds.bench import data, sync, train
from ssd_ds.bench import eval as evaluation
from ssd_ds.bench.kernels import decode, encode, loss

BENCHMARKS = {"data": data, "eval": evaluation, "sync": sync, "train": train, "loss": loss, "decode": decode,
              "encode": encode}


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(prog="python -m ssd_ds.bench", description=bench.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    for what, module in BENCHMARKS.items():
        module.add_arguments(sub.add_parser(what, help=module.HELP, description=module.__doc__,
                                            formatter_class=argparse.RawDescriptionHelpFormatter))
    args, rest = parser.parse_known_args(argv)
    if args.what == "train":  # the rest are the trainer's flags
        args.trainer_argv = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return BENCHMARKS[args.what].run(args)


if __name__ == "__main__":
    from ssd_ds.cli import run_cli

    run_cli(main)
