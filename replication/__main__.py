"""`python -m replication <command>`: the project's only entry point (thin: parse, call, print)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing

from replication import errors  # imports nothing else: a missing package is still reported below


def _missing_package(err: ModuleNotFoundError) -> int:
    print(f"error: Python package '{err.name}' is missing from {sys.executable}: install it "
          "(pip install -r requirements.txt lists every one), or run make without PY= to use the "
          "project's own .venv", file=sys.stderr)
    return 2


INTERRUPTED = "interrupted: rerun the same command to resume; finished files are kept"

try:  # first: sets the backend's environment (quiet TensorFlow) before Keras starts
    from replication import backend
except ModuleNotFoundError as _err:
    sys.exit(_missing_package(_err))


def _start_keras() -> None:
    """Start Keras, its start-up chatter held back (backend._keras). Commands call this after
    their cheap checks, so a bad config is refused before TensorFlow loads. An unsupported
    KERAS_BACKEND is one line, like every other bad input."""
    backend.name()


def _models(args):
    from replication import config as config_lib
    from replication import data

    _start_keras()
    from replication import models

    print(f"{'network':8} {'input':>12} {'classes':>7} {'trainable':>12} {'non-trainable':>14}  batchnorm")
    for name in config_lib.NETWORKS:  # built for the shape and classes of the paper's dataset
        spec = data.DATASETS[config_lib.PAPER_DATASET[name]]
        shape, classes = spec.input_shape, spec.num_classes
        model = models.build(name, shape, classes, args.batchnorm)
        trainable, frozen = models.parameter_counts(model)
        print(f"{name:8} {str(shape):>12} {classes:>7} {trainable:>12,} {frozen:>14,}  {args.batchnorm}")


def _train(args):
    from replication import config as config_lib
    from replication import regimes, train

    config = config_lib.load(args.config, args.set)
    runs = [regimes.parse(args.regime)] if args.regime else config.runs()  # a bad name: before Keras starts
    _start_keras()
    seeds = [args.seed] if args.seed is not None else list(config.seeds)
    for seed in seeds:
        for spec in runs:
            print(train.train(config, spec, seed))


def _check(args):
    from replication import config as config_lib
    from replication import rundir

    config = config_lib.load(args.config, args.set)
    _start_keras()
    print(f"{args.config}: {rundir.check(config)} finished run(s), all made by this config")


def _table2(args):
    from replication.analysis import compare, results

    rows = compare.table2(results.load(args.results_dir))
    markdown = compare.table2_markdown(rows)
    compare.write_table(args.results_dir, "table2", rows, markdown)
    print(markdown)


def _sharpness(args):
    _start_keras()
    from replication.measure import sharpness

    for run_dir in args.run_dir:
        sharpness.sharpness_all(run_dir, None if args.epsilon is None else [args.epsilon],
                                [args.space] if args.space else None, args.dim, args.force)


def _noise(args):
    _start_keras()
    from replication.measure import noise

    for run_dir in args.run_dir:
        noise.noise_scale(run_dir, args.point, args.force)


def _iterates(args):
    _start_keras()
    from replication.measure import iterates

    for run_dir in args.run_dir:
        print(iterates.measure(run_dir, args.force))


def _matched(args):
    _start_keras()
    from replication.measure import matched

    for run_dir in args.run_dir:
        print(matched.measure(run_dir, args.levels, args.patiences, args.epsilon and [args.epsilon],
                              args.space and [args.space], args.force, lambda_max=args.lambda_max))


def _budget(args):
    _start_keras()
    from replication.measure import budget

    for run_dir in args.run_dir:
        for path in budget.measure(run_dir, args.iterations, args.restarts, [args.epsilon], [args.space],
                                   args.force):
            print(path)


def _positive_list(kind):
    """argparse type: a comma-separated list of positive numbers of `kind` (one line if not)."""
    def parse(text):
        try:
            values = [kind(v) for v in text.split(",")]
        except ValueError:
            values = []
        if not values or not all(v > 0 for v in values):
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of positive "
                                             f"{kind.__name__}s (e.g. {'0.1,0.01' if kind is float else '2,5'})")
        return values
    return parse


def _count(text):
    """argparse type: an integer >= 0."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 0")
    return int(text)


def _section_options(parser, section) -> None:
    """An option per key of a config section (a dataclass of config.py) but `enabled`: --<key>
    VALUE, a tuple as a comma-separated list; its type, default and help are the field's, so the
    command's defaults are the section's."""
    hints = typing.get_type_hints(section)
    for field in dataclasses.fields(section):
        if field.name == "enabled":
            continue
        kind, default = hints[field.name], field.default
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else f"{default:g}"
        if typing.get_origin(kind) is tuple:
            item = typing.get_args(kind)[0]
            kind = lambda text, item=item: tuple(item(v) for v in text.split(","))  # noqa: E731
        parser.add_argument(f"--{field.name}", type=kind, default=default, metavar=field.name.upper(),
                            help=f"{field.metadata['help']} (default {shown})")


def _hessian(args):
    _start_keras()
    from replication.measure import hessian

    options = {k: getattr(args, k) for k in hessian.DEFAULTS}
    for run_dir in args.run_dir:
        hessian.measure_run(run_dir, args.measures, args.kinds, args.force, **options)


def _table_sharpness(args):
    from replication.analysis import compare, results

    space = "full" if args.command == "table3" else "random"
    rows = compare.table_sharpness(results.load(args.results_dir), space)
    markdown = compare.table_sharpness_markdown(rows)
    compare.write_table(args.results_dir, args.command, rows, markdown)
    print(markdown)


def _landscape(args):
    from replication import config as config_lib

    config = config_lib.load(args.config, args.set)
    _start_keras()
    from replication.measure import landscape
    from replication.analysis import landscape_figures

    seeds = [args.seed] if args.seed is not None else landscape.finished_seeds(config)
    if not seeds:
        print(f"no seed of {args.config} has both its SB and LB runs finished: train them first",
              file=sys.stderr)
    paths = [args.path] if args.path else list(landscape.PATHS)
    for seed in seeds:
        before = {path: _mtime(landscape.output_stem(config, seed, path).with_suffix(".csv")) for path in paths}
        for path, csv_path in zip(paths, landscape.compute(config, seed, paths)):
            if _mtime(csv_path) != before[path] or not landscape_figures.drawn(csv_path):
                landscape_figures.plot(csv_path)  # a new curve gets new figures; kept ones stay as committed
            print(csv_path)


def _mtime(path) -> int | None:
    return path.stat().st_mtime_ns if path.exists() else None


def _evaluate(args):
    _start_keras()
    from replication.measure import evaluate

    for run_dir in args.run_dir:
        evaluate.evaluate(run_dir)
        print(evaluate.table(run_dir))


def _report(args):
    _start_keras()
    from replication.analysis import report

    print(report.build(args.results_dir))


def _readme(args):
    from replication.analysis import readme

    changed = readme.write()
    print("\n".join(map(str, changed)) if changed else "README.md and docs/: the generated parts already agree with results/")


def _batch_size(args):
    from replication import config as config_lib

    config_lib.load(args.config, args.set)  # a bad config is refused before Keras starts
    _start_keras()
    from replication.experiments import batchsize
    from replication.analysis import batchsize_report

    config = batchsize.study(args.config, args.set, args.seed, only=args.batch)
    if args.batch is not None:
        print(f"batch {args.batch}: its runs are trained; run without --batch for the report")
    else:
        print(batchsize_report.write_report(config.results_dir))


def _recommend(args):
    from replication import config as config_lib
    from replication import recommend

    recommend.check(config_lib.load(args.config, args.set), args.budget)  # refused before Keras starts
    _start_keras()
    print(recommend.summary(recommend.recommend(args.config, args.set, args.budget, args.seed)))


def _unseen_inputs(args):
    _start_keras()
    from replication.analysis import unseen_inputs

    path = unseen_inputs.write(args.results_dir)
    print(path)


def _make_rules(args):
    from replication import config as config_lib

    for path in args.configs:  # every config checked before Keras starts
        config_lib.load(path)
    _start_keras()
    from replication import pipeline

    print(pipeline.rules(args.name, args.configs, args.results_root), end="")


def _diff(args):
    from replication.analysis import rerun

    return rerun.main(args.first, args.second, args.rtol, args.summary, args.started)


def _bench(args):
    _start_keras()
    from replication import bench

    print(bench.run(args.out, quick=args.quick, networks=args.networks))


def _slot(args):
    from replication import slot

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    try:
        slot.run(args.gpus, args.per_gpu, command)
    except slot.SlotError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _launch(args):
    from replication import config as config_lib
    from replication import launch, storage

    for path in args.configs:  # every config checked before Keras starts
        config_lib.load(path)
    folder = args.logs or str(storage.cache_directory() / "launch" / "%j")
    if not 1 <= args.poll < float("inf"):  # NaN fails this too; 0 would ask squeue in a tight loop, inf fails in sleep
        print(f"error: --poll {args.poll:g} is not a finite number of seconds >= 1: give how often to look at the "
              "queue (default 30)", file=sys.stderr)
        return 2
    try:
        executors = launch.slurm_executors(folder, args.partition, args.time, args.gres, args.parallel,
                                           args.sbatch_flag, launch.JOB_NAME)
        _start_keras()
        return launch.launch(args.configs, executors, args.poll)
    except launch.LaunchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    """Every command, its options and the function that runs it (args.func)."""
    parser = argparse.ArgumentParser(prog="python -m replication", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="print each network's parameter counts")
    p.add_argument("--batchnorm", default="batch_statistics", choices=("batch_statistics", "moving_average"))
    p.set_defaults(func=_models)

    p = sub.add_parser("train", help="train runs of a config; prints each run directory")
    p.add_argument("config")
    p.add_argument("--seed", type=int, help="one seed (default: every seed of the config)")
    p.add_argument("--regime", help="one run: sb, lb, a sweep run b<batch>[-sqrt|-linear], or a remedy "
                   "run sb|lb-augmented, sb|lb-conservative, or a piggyback run lb-from-sb<k> (Figure 5) "
                   "(default: SB, LB, the config's sweep, its remedies, then its piggyback runs)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (dotted for sections), repeatable")
    p.set_defaults(func=_train)

    p = sub.add_parser("check", help="refuse (exit 2) if a finished run of CONFIG was made by another "
                       "config, naming the key that differs (make runs this first)")
    p.add_argument("config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (dotted for sections), repeatable")
    p.set_defaults(func=_check)

    p = sub.add_parser("table2", help="Table 2 (accuracy) from the runs under RESULTS_DIR")
    p.add_argument("results_dir")
    p.set_defaults(func=_table2)

    p = sub.add_parser("sharpness", help="Metric 2.1 of finished runs (default: every epsilon and "
                       "space of the run's config); writes RUN_DIR/sharpness/<space>_eps<eps>.json")
    p.add_argument("run_dir", nargs="+")
    p.add_argument("--epsilon", type=float, help="one epsilon (default: config sharpness.epsilons)")
    p.add_argument("--space", choices=("full", "random"), help="one space (default: config sharpness.spaces)")
    p.add_argument("--dim", type=int, help="p, columns of A in the random subspace (default: config sharpness.dim)")
    p.add_argument("--force", action="store_true", help="recompute even if a result with these settings exists")
    p.set_defaults(func=_sharpness)

    p = sub.add_parser("noise", help="gradient noise scale B_simple (McCandlish et al. 2018) of finished "
                       "runs; writes RUN_DIR/noise/<point>.json")
    p.add_argument("run_dir", nargs="+")
    p.add_argument("--point", default="final",
                   help="final: the run's minimiser (default); initial: its x0; epoch<N>: its kept iterate of epoch N")
    p.add_argument("--force", action="store_true", help="recompute even if a result with these settings exists")
    p.set_defaults(func=_noise)

    p = sub.add_parser("iterates", help="Figure 6: training cross-entropy and sharpness (every epsilon and "
                       "space of the run's config) at every kept iterate of finished runs; writes "
                       "RUN_DIR/iterates/{xent,sharpness}_epoch<N>*.json, then measured.json (printed)")
    p.add_argument("run_dir", nargs="+")
    p.add_argument("--force", action="store_true", help="recompute even if a result with these settings exists")
    p.set_defaults(func=_iterates)

    p = sub.add_parser("matched", help="sharpness at matched training loss and at the plateau rule's stop: "
                       "f and phi at the kept iterates nearest each loss level, where `stopping: plateau` "
                       "would stop, and the final one (runs with keep_every: 1); writes "
                       "RUN_DIR/iterates/matched.json (printed)")
    p.add_argument("run_dir", nargs="+")
    p.add_argument("--levels", type=_positive_list(float), default=[0.1, 0.03, 0.01, 0.003, 0.001],
                   metavar="0.1,0.03,...", help="training cross-entropy levels (default 0.1,0.03,0.01,0.003,0.001)")
    p.add_argument("--patiences", type=_positive_list(int), default=[2, 5, 10], metavar="2,5,10",
                   help="plateau patiences, in epochs (default 2,5,10)")
    p.add_argument("--epsilon", type=float, help="one epsilon (default: config sharpness.epsilons)")
    p.add_argument("--space", choices=("full", "random"), help="one space (default: config sharpness.spaces)")
    p.add_argument("--lambda-max", action="store_true",
                   help="also the Hessian's top eigenvalue at each point (Lanczos with the config's hessian "
                        "iterations, tol, seed); writes RUN_DIR/iterates/lambda_epoch<N>.json")
    p.add_argument("--force", action="store_true", help="recompute even if a result with these settings exists")
    p.set_defaults(func=_matched)

    p = sub.add_parser("budget", help="the solver's budget: phi at a run's final weights with more L-BFGS-B "
                       "iterations and from random starts; writes RUN_DIR/sharpness/budget/*.json")
    p.add_argument("run_dir", nargs="+")
    p.add_argument("--iterations", type=_positive_list(int), default=[10, 50, 200], metavar="10,50,200",
                   help="iteration caps, each from y = 0 (default 10,50,200)")
    p.add_argument("--restarts", type=_count, default=3, help="random starts in the box at the smallest cap "
                   "(default 3; 0: none)")
    p.add_argument("--epsilon", type=float, default=1e-3, help="epsilon (default 1e-3)")
    p.add_argument("--space", choices=("full", "random"), default="full", help="space (default full)")
    p.add_argument("--force", action="store_true", help="recompute even if a result with these settings exists")
    p.set_defaults(func=_budget)

    p = sub.add_parser("hessian", help="top eigenvalue and trace of the Hessian of f, Metric 2.1 over draws "
                       "of A, filter-normalised slices of f (Li et al. 2018), and each under function-preserving "
                       "reparametrisations (Dinh et al. 2017); writes RUN_DIR/hessian/<name>.json (and the "
                       "slices' CSVs and figure)")
    p.add_argument("run_dir", nargs="+")
    from replication import config as config_lib

    _section_options(p, config_lib.HessianConfig)
    p.add_argument("--force", action="store_true", help="recompute even if a result with these settings exists")
    p.set_defaults(func=_hessian)

    for name, what in (("table3", "full space"), ("table4", "random subspaces")):
        p = sub.add_parser(name, help=f"Table {name[-1]} (sharpness, {what}) from the runs under RESULTS_DIR")
        p.add_argument("results_dir")
        p.set_defaults(func=_table_sharpness)

    p = sub.add_parser("landscape", help="Figures 3 and 7: loss on the paths between each finished "
                       "SB/LB pair of a config; prints each CSV")
    p.add_argument("config")
    p.add_argument("--seed", type=int, help="one seed (default: every seed whose SB and LB runs finished)")
    p.add_argument("--path", choices=("linear", "curvilinear"), help="one path (default: both)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (dotted for sections), repeatable")
    p.set_defaults(func=_landscape)

    p = sub.add_parser("evaluate", help="f(x), accuracy, |grad f| and phi of finished runs on this "
                       "process's backend; prints every backend's numbers side by side")
    p.add_argument("run_dir", nargs="+")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("report", help="rebuild RESULTS_DIR/REPORT.md and tables/ from result files "
                       "(no training)")
    p.add_argument("results_dir")
    p.set_defaults(func=_report)

    p = sub.add_parser("readme", help="rewrite the generated parts of README.md and docs/*.md (the results "
                       "contract, the batch-size figures) from the result files under results/ (no training); "
                       "prints each file changed")
    p.set_defaults(func=_readme)

    p = sub.add_parser("batch-size", help="how to choose the batch size: steps to a target against the "
                       "batch size, the learning rate tuned per batch (grid extended past its edges), the "
                       "critical batch size and the noise scale; trains what is missing, then writes "
                       "RESULTS_DIR/REPORT.md (prints it)")
    p.add_argument("config")
    p.add_argument("--seed", type=int, help="one seed (default: every seed of the config)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (dotted for sections), repeatable")
    p.add_argument("--batch", type=int, help="train this batch size's runs only (no noise scale, no report)")
    p.set_defaults(func=_batch_size)

    p = sub.add_parser("recommend", help="a batch size, its learning rate and the steps it needs, from one "
                       "short run of a batch-size study's config: its noise scale (docs/noise-scale.md); writes "
                       "RESULTS_DIR/recommend/recommendation.json (prints a summary)")
    p.add_argument("config")
    p.add_argument("--budget", type=float, default=0.05, help="the short run's steps as a fraction of the study's "
                   "step budget, target.max_steps x batch sizes x rate multipliers x seeds (default 0.05)")
    p.add_argument("--seed", type=int, help="the short run's seed (default: the config's first)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (dotted for sections), repeatable")
    p.set_defaults(func=_recommend)

    p = sub.add_parser("unseen-inputs", help="for each noise record with an Adam value under RESULTS_DIR: the input "
                       "features no example trained on so far had lit (their first-layer weights: v = 0, P = "
                       "1/epsilon) and how many measured batches light them; writes RESULTS_DIR/tables/unseen_inputs.csv")
    p.add_argument("results_dir")
    p.set_defaults(func=_unseen_inputs)

    p = sub.add_parser("make-rules", help="print Make rules for every result of CONFIGS (used by the Makefile)")
    p.add_argument("--name", required=True, help="profile name: the rules end with <name>-all")
    p.add_argument("--results-root", metavar="DIR", help="write results/<x> of each config to DIR/<x> "
                   "instead (passed to its commands as --set results_dir=DIR/<x>; make quick: local)")
    p.add_argument("configs", nargs="+")
    p.set_defaults(func=_make_rules)

    p = sub.add_parser("bench", help="throughput, FLOP/s vs a measured matmul peak, sharpness cost")
    p.add_argument("--out", default="results/bench")
    p.add_argument("--quick", action="store_true", help="tiny sizes (for tests)")
    p.add_argument("--networks", type=lambda s: s.split(","), metavar="F1,C1,C2",
                   help="networks to time training of (default: F1,C1, and C2 on a GPU)")
    p.set_defaults(func=_bench)

    from replication.analysis import rerun  # light: the rule it states is the help's

    p = sub.add_parser("diff", help="does a rerun reproduce a results folder? compares every number of "
                       "the JSON/CSV result files of FIRST and SECOND (exit 1 when they differ)",
                       description="Compares every number of the JSON/CSV result files of FIRST and SECOND; "
                       f"{rerun.IGNORED_RULE}")
    p.add_argument("first")
    p.add_argument("second")
    p.add_argument("--rtol", type=float, default=0.0, help="relative tolerance in [0, 1) (default 0: exact)")
    p.add_argument("--summary", action="store_true", help="FIRST is the reference, SECOND the rerun: the "
                   "first 10 differences, then what was reproduced, what differs and why (env.json), the "
                   "report and the time (make quick ends with this; same exit status)")
    p.add_argument("--started", type=float, metavar="UNIX_TIME", help="with --summary: also the wall time "
                   "since then")
    p.set_defaults(func=_diff)

    p = sub.add_parser("slot", help="run COMMAND on a GPU of its own (make -j on a multi-GPU node: the "
                       "Makefile's GPUS=...): locks a free slot, then execs COMMAND with CUDA_VISIBLE_DEVICES set")
    p.add_argument("--gpus", required=True, help="the node's GPU ids, e.g. \"0 1 2 3\"")
    p.add_argument("--per-gpu", type=int, default=1, help="jobs sharing one GPU (default 1; more turns "
                   "JAX's and TensorFlow's memory preallocation off)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")
    p.set_defaults(func=_slot)

    p = sub.add_parser("launch", help="a profile on a Slurm cluster: shared inputs here, then one job array "
                       "task per stale run (its training and measurements, one GPU), then the reports here; "
                       "a second launch submits only what is missing (docs/cluster.md)")
    p.add_argument("scheduler", choices=("slurm",))
    p.add_argument("configs", nargs="+")
    p.add_argument("--partition", required=True)
    p.add_argument("--time", help="each task's time limit: minutes or D-HH:MM:SS (default: the partition's "
                   "longest)")
    p.add_argument("--gres", default="gpu:1", help="what each task asks for (default gpu:1)")
    p.add_argument("--parallel", type=int, help="at most this many tasks at once (sbatch --array=...%%N)")
    p.add_argument("--sbatch-flag", action="append", default=[], metavar="KEY[=VALUE]",
                   help="an sbatch option for the site, without dashes (account=abc, constraint=a100, "
                   "qos=normal, cpus-per-task=8, mem=32G), repeatable")
    p.add_argument("--logs", help="folder of the tasks' logs, on a shared filesystem (default "
                   ".cache/launch/%%j: one folder per task)")
    p.add_argument("--poll", type=float, default=30, help="seconds between looks at the queue (default 30)")
    p.set_defaults(func=_launch)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status = args.func(args)  # None, or a command's own exit status (diff: 1 = not reproduced)
    except KeyboardInterrupt:  # Ctrl-C: every file is written atomically, so a rerun resumes
        print(INTERRUPTED, file=sys.stderr)
        return 130
    except errors.UserError as err:
        # One line, even where a message quotes a multi-line one (a YAML parser's).
        print("error: " + " ".join(line.strip() for line in str(err).splitlines() if line.strip()),
              file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:
        return _missing_package(err)
    except Exception as err:
        if not backend.is_out_of_memory(err):
            raise
        print(f"error: out of device memory ({type(err).__name__}): {errors.OUT_OF_MEMORY_FIX}",
              file=sys.stderr)
        return 2
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
