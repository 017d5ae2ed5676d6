"""`kollm dpo`: the command over both DPO modules. `kollm dpo CONFIG` trains offline DPO
(kollm.train.dpo), `kollm dpo --online CONFIG` runs online rounds (kollm.train.dpo_online, which
builds on kollm.train.dpo), `kollm dpo sample ...` writes k samples per prompt of a policy
(kollm.data.samples) and `kollm dpo pairs ...` builds pairs from scored responses
(kollm.data.pairs). It sits above them so that neither DPO module imports the other's caller.
"""

from __future__ import annotations

import argparse
import sys

from kollm.data.pairs import main as pairs_main
from kollm.data.samples import main as sample_main
from kollm.plan import add_plan_args, emit
from kollm.train import dpo as offline
from kollm.train.dpo import dry_run, load_dpo_config, train_dpo
from kollm.train.dpo_online import run_online
from kollm.train.parallel import distributed_run


def main(argv: list[str]) -> int:
    if argv and argv[0] == "pairs":
        return pairs_main(argv[1:])
    if argv and argv[0] == "sample":
        return sample_main(argv[1:])
    p = argparse.ArgumentParser(prog="kollm dpo", description=offline.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="kollm dpo sample --help: k samples per prompt; kollm dpo pairs --help: "
                                       "build pairs from scored responses")
    p.add_argument("config", help="DPO config (YAML), e.g. recipes/tiny-dpo.yaml")
    p.add_argument("--online", action="store_true", help="online DPO rounds (dpo.online section)")
    p.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint / round")
    p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a config value (YAML), e.g. --set data.train=pairs.jsonl (repeatable)")
    add_plan_args(p, "print the compute plan (reference pass, sampling, training) and exit")
    args = p.parse_args(argv)
    raw, dpo, data_train, data_val = load_dpo_config(args.config, args.set)
    if args.dry_run:
        return emit(dry_run(raw, dpo, data_train, args, args.online, args.config), args)

    with distributed_run() as info:  # a diverged run raises: `kollm` exits 3 with its message
        if args.online:
            run_online(raw, dpo, data_val, info, resume=args.resume, where=args.config)
        else:
            trainer = train_dpo(raw, dpo, data_train, data_val, info, args.resume, where=args.config)
            if trainer.export is not None:
                print(f"kollm dpo: Hugging Face export in {trainer.export}", file=sys.stderr)
    return 0


__all__ = ["main"]
