"""Launch checks that turn multi-node hangs into clear errors.

`python -m ssd_ds.launch check --hostfile H (--config SYSTEM.json | --deepspeed_config X.json) [--no_ssh]` before
`deepspeed --hostfile H` (--config: the DeepSpeed JSON a run config names, e.g. configs/systems/*.json): the hostfile
parses (`host slots=N` lines, `#` comments), its slot total fits the config's batch arithmetic, and
(unless --no_ssh) every host answers on its ssh port within a few seconds. In the trainer,
`ssd_ds.distributed.wait_for_rendezvous` gives ranks other than 0 a bounded wait for the master's rendezvous port with
an error that names it, and `ssd_ds.distributed.check_local_rank` catches a hostfile that promises more slots than a
node has GPUs.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from ssd_ds import ds_config
from ssd_ds.distributed import reachable
from ssd_ds.errors import BadInput, NotFound
from ssd_ds.run_config import from_file

_LINE = re.compile(r"^(?P<host>\S+)\s+slots=(?P<slots>\d+)$")


def parse_hostfile(path: str | Path) -> dict[str, int]:
    """`{host: slots}` in file order; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"{path}: hostfile not found")
    hosts: dict[str, int] = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = _LINE.match(line)
        if match is None:
            raise BadInput(f"{path}:{number}: expected 'HOST slots=N', got {raw.strip()!r}")
        host, slots = match["host"], int(match["slots"])
        if host in hosts:
            raise BadInput(f"{path}:{number}: host {host!r} listed twice")
        if slots < 1:
            raise BadInput(f"{path}:{number}: {host} has slots={slots}; need at least 1")
        hosts[host] = slots
    if not hosts:
        raise BadInput(f"{path}: no hosts")
    return hosts


def check_hostfile(hostfile: str, ds_config_path: str, ssh: bool = True, ssh_port: int = 22,
                   timeout: float = 5.0) -> dict[str, int]:
    """Raise with every problem found; return the hosts when the launch can go ahead."""
    hosts = parse_hostfile(hostfile)
    world = sum(hosts.values())
    # Slots must match the config's batch arithmetic (precision is not checked: this machine may have no GPU).
    ds_config.check_batch(ds_config.read(ds_config_path), ds_config_path, world)
    if ssh:
        down = {h: why for h in hosts if (why := reachable(h, ssh_port, timeout)) is not None}
        if down:
            lines = "\n".join(f"  {h}: {why}" for h, why in down.items())
            raise RuntimeError(f"{hostfile}: {len(down)} of {len(hosts)} hosts do not answer on port {ssh_port} "
                               f"within {timeout:g} s:\n{lines}")
    return hosts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="check a hostfile against a DeepSpeed config before launching")
    check.add_argument("--hostfile", required=True)
    engine = check.add_mutually_exclusive_group(required=True)
    engine.add_argument("--config", help="a run config (configs/systems/*.json): check its deepspeed_config")
    engine.add_argument("--deepspeed_config")
    check.add_argument("--no_ssh", action="store_true", help="skip the ssh reachability check")
    check.add_argument("--ssh_port", type=int, default=22)
    check.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args(argv)
    try:
        engine_path = args.deepspeed_config or from_file(args.config).deepspeed_config
        hosts = check_hostfile(args.hostfile, engine_path, not args.no_ssh, args.ssh_port, args.timeout)
    except (OSError, ValueError, RuntimeError) as exc:  # every failed check is the user's to fix: no traceback
        print(f"error: launch check failed: {exc}", file=sys.stderr)
        return 2
    print(f"{args.hostfile}: {len(hosts)} hosts, {sum(hosts.values())} ranks; fits {engine_path}")
    return 0


if __name__ == "__main__":
    from ssd_ds.cli import run_cli

    run_cli(main)
