"""`python -m replication <command>`: the project's only entry point (thin: parse, call, print)."""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # keep TensorFlow's start-up chatter out of logs


def _models(args):
    from replication import models

    print(f"{'network':8} {'input':>12} {'classes':>7} {'trainable':>12} {'non-trainable':>14}  batchnorm")
    for name, (shape, classes) in {"F1": ((28, 28, 1), 10), "F2": ((360,), 1973),
                                   "C1": ((32, 32, 3), 10), "C2": ((32, 32, 3), 10),
                                   "C3": ((32, 32, 3), 100), "C4": ((32, 32, 3), 100)}.items():
        model = models.build(name, shape, classes, args.batchnorm)
        trainable, frozen = models.parameter_counts(model)
        print(f"{name:8} {str(shape):>12} {classes:>7} {trainable:>12,} {frozen:>14,}  {args.batchnorm}")


def _train(args):
    from replication import config as config_lib
    from replication import train

    config = config_lib.load(args.config, args.set)
    seeds = [args.seed] if args.seed is not None else list(config.seeds)
    regimes = [args.regime] if args.regime else list(config_lib.REGIMES)
    for seed in seeds:
        for regime in regimes:
            print(train.train(config, regime, seed))


def _table2(args):
    from replication import compare

    rows = compare.table2(args.results_dir)
    markdown = compare.table2_markdown(rows)
    compare.write_table(args.results_dir, "table2", rows, markdown)
    print(markdown)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m replication", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="print each network's parameter counts")
    p.add_argument("--batchnorm", default="batch_statistics", choices=("batch_statistics", "moving_average"))
    p.set_defaults(func=_models)

    p = sub.add_parser("train", help="train runs of a config; prints each run directory")
    p.add_argument("config")
    p.add_argument("--seed", type=int, help="one seed (default: every seed of the config)")
    p.add_argument("--regime", choices=("sb", "lb"), help="one regime (default: SB then LB)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (dotted for sections), repeatable")
    p.set_defaults(func=_train)

    p = sub.add_parser("table2", help="Table 2 (accuracy) from the runs under RESULTS_DIR")
    p.add_argument("results_dir")
    p.set_defaults(func=_table2)

    args = parser.parse_args(argv)
    from replication import errors

    try:
        args.func(args)
    except errors.EXPECTED as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
