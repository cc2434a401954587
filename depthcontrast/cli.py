"""`depthcontrast` command line: one subcommand per stage, one-line errors for user mistakes."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

from depthcontrast import __version__
from depthcontrast.errors import ConfigError, DepthContrastError
from depthcontrast.log import setup_logging
from depthcontrast.slurm import TaskLayout

log = logging.getLogger("depthcontrast")
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C (= train.EXIT_INTERRUPTED)


def _dataset_settings(config_path: str, dataset: str) -> dict:
    from depthcontrast.config import load_config

    config = load_config(config_path)
    if dataset not in config["datasets"]:
        known = ", ".join(sorted(config["datasets"]))
        raise ConfigError(f"{config_path}: no dataset {dataset!r} (configured: {known})")
    return config["datasets"][dataset]


def cmd_validate(args: argparse.Namespace) -> None:
    from depthcontrast.config import load_config

    config = load_config(args.config)
    if args.print:
        json.dump(config, sys.stdout, indent=2, sort_keys=True)
        print()
    else:
        print(f"{args.config}: valid ({len(config['datasets'])} datasets, {len(config['pretrain'])} pretraining runs)")


def cmd_download(args: argparse.Namespace) -> None:
    from depthcontrast.stages.download import run_download

    settings = _dataset_settings(args.config, args.dataset)
    out = Path(args.out or Path(args.results) / "raw" / args.dataset)
    run_download(args.dataset, settings["source"], out)


def cmd_preprocess(args: argparse.Namespace) -> None:
    from depthcontrast.stages.preprocess import run_preprocess

    settings = _dataset_settings(args.config, args.dataset)
    results = Path(args.results)
    manifest = Path(args.manifest or results / "raw" / args.dataset / "MANIFEST.json")
    out = Path(args.out or results / "shards" / args.dataset)
    summary = run_preprocess(args.dataset, settings, manifest, out, workers=args.workers)
    print(json.dumps(summary, sort_keys=True))


def _run_settings(args: argparse.Namespace) -> tuple[dict, list[Path], TaskLayout]:
    """The run's validated training settings, shard folders and task layout: from --config/--run, or --run-json
    from the workflow; layout flags override the run's `resources:` block."""
    from depthcontrast.config import load_config

    if args.run_json:
        run = json.loads(args.run_json)
        shards = [Path(p) for p in args.shards]
        layout = TaskLayout()
    else:
        config = load_config(args.config)
        if args.run not in config["pretrain"]:
            known = ", ".join(sorted(config["pretrain"])) or "none"
            raise ConfigError(f"{args.config}: no pretrain run {args.run!r} (configured: {known})")
        run = dict(config["pretrain"][args.run])
        layout = TaskLayout.of_run(run.pop("resources"))  # how to run it, not what is trained
        shards = [Path(p) for p in args.shards] or [Path(args.results) / "shards" / d for d in run["datasets"]]
    flags = {"nodes": args.nodes, "tasks_per_node": args.tasks_per_node, "gpus_per_task": args.gpus_per_task,
             "cpus_per_task": args.cpus_per_task}  # fmt: skip
    return run, shards, dataclasses.replace(layout, **{k: v for k, v in flags.items() if v is not None})


def _pretrain_worker(local: int, args: argparse.Namespace, run: dict, shards: list[Path]) -> None:
    """One process of the seed-style `--multiprocessing-distributed` launch (mp.spawn target)."""
    from depthcontrast.launch import world_from_seed_flags
    from depthcontrast.train import pretrain

    setup_logging(args.log, debug=args.debug)
    world = world_from_seed_flags(args.rank, args.world_size, args.ngpus, local, args.dist_url)
    code = pretrain(args.run, run, shards, _pretrain_out(args), world, resume=args.resume, device=args.device)
    if code:
        sys.exit(code)


def _pretrain_out(args: argparse.Namespace) -> Path:
    return Path(args.out or Path(args.results) / "pretrain" / args.run)


def cmd_pretrain(args: argparse.Namespace) -> int:
    from depthcontrast.launch import world_from_environment
    from depthcontrast.slurm import in_allocation_outside_step, srun_command
    from depthcontrast.train import EXIT_REQUEUE, pretrain

    run, shards, layout = _run_settings(args)
    if layout.world_size > 1 and not args.multiprocessing_distributed and in_allocation_outside_step():
        command = srun_command(layout, [sys.executable, "-m", "depthcontrast", *args.argv])
        log.info("starting %d tasks: %s", layout.world_size, " ".join(command[: command.index(sys.executable)]))
        logging.shutdown()
        os.execvp(command[0], command)  # srun forwards Slurm's signals to every task
    if args.multiprocessing_distributed:
        import torch.multiprocessing as mp

        try:
            mp.spawn(_pretrain_worker, args=(args, run, shards), nprocs=args.ngpus, join=True)
        except mp.ProcessExitedException as exc:
            return exc.exit_code if exc.exit_code in (EXIT_REQUEUE, EXIT_INTERRUPTED) else 1
        return 0
    world = world_from_environment()
    if layout.world_size > 1 and not world.distributed:
        log.warning("pretrain %s asks for %d tasks, but this is no Slurm allocation: training as one process "
                    "(start it with srun or torchrun for more)", args.run, layout.world_size)  # fmt: skip
    return pretrain(args.run, run, shards, _pretrain_out(args), world, resume=args.resume, device=args.device)


def cmd_export(args: argparse.Namespace) -> None:
    from depthcontrast.export import export_checkpoint

    weights, sidecar = export_checkpoint(Path(args.checkpoint), args.target, Path(args.out))
    print(f"{weights}\n{sidecar}")


def cmd_import_seed(args: argparse.Namespace) -> None:
    from depthcontrast.export import import_seed_checkpoint

    print(import_seed_checkpoint(Path(args.checkpoint), Path(args.out), trust_pickle=args.trust_pickle))


def cmd_summarize(args: argparse.Namespace) -> int:
    from depthcontrast.architectures import evaluated_tasks
    from depthcontrast.config import load_config
    from depthcontrast.report import summarize_results

    config = load_config(args.config)
    runs = sorted(name for name, run in config["pretrain"].items() if run["enabled"])
    statuses = summarize_results(Path(args.results), runs, evaluated_tasks(config))
    for status in statuses:
        missing = ", ".join(f"{task}: {why}" for task, why in status.missing_tasks)
        print(f"{status.run}\t{status.state}\t{status.detail or (f'evaluation missing: {missing}' if missing else '')}")
    print(f"wrote {Path(args.results) / 'summary.md'}", file=sys.stderr)
    return 0 if all(status.complete for status in statuses) else 1


def cmd_inspect(args: argparse.Namespace) -> None:
    from depthcontrast.data.shard_dataset import ShardDataset
    from depthcontrast.log import progress

    dataset = ShardDataset(Path(args.shard_dir), verify=not args.quick)
    index = dataset.index
    if not args.quick:  # every shard against index.json, not only those behind the samples shown
        for k in progress(range(len(index.shards)), desc="sha256", total=len(index.shards), unit="shard"):
            dataset.check_shard(k)
    features = ", ".join(f"{name} ({index.feature_samples.get(name, 0)})" for name in index.feature_names) or "none"
    labels = f"{index.labelled_samples} labelled" if index.has_labels else "none"
    print(
        f"{args.shard_dir}: {len(dataset)} samples in {len(index.shards)} shards, {index.num_points} points; "
        f"features (samples with it): {features}; labels: {labels}; "
        f"{index.shifted_samples} stored relative to an origin"
    )
    for name, count in index.dropped_features.items():
        print(f"  feature {name} left out (only {count} samples had it; partial_features: drop)")
    print(f"  sha256: {'not checked (--quick)' if args.quick else f'all {len(index.shards)} shards match index.json'}")
    for i in range(min(args.head, len(dataset))):
        item = dataset[i]
        print(f"  [{i}] {item['sample_id']}: {item['points'].shape[0]} points")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="depthcontrast", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="full tracebacks and debug logs")
    parser.add_argument("--log", help="append logs to this file instead of stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    validate = sub.add_parser("validate-config", help="check a config file against the schema")
    validate.add_argument("config", nargs="?", default="config.yaml")
    validate.add_argument("--print", action="store_true", help="print the config with defaults filled")
    validate.set_defaults(func=cmd_validate)

    for name, func, helptext in (
        ("download", cmd_download, "fetch or locate a dataset's raw files; write MANIFEST.json"),
        ("preprocess", cmd_preprocess, "decode raw files into HDF5 shards + index.json + quarantine.json"),
    ):
        stage = sub.add_parser(name, help=helptext)
        stage.add_argument("--config", default="config.yaml")
        stage.add_argument("--dataset", required=True, help="a name under `datasets:` in the config")
        stage.add_argument("--results", default="results", help="results folder (default: results)")
        stage.add_argument("--out", help="output folder (default: results/<stage>/<dataset>)")
        stage.set_defaults(func=func)
        if name == "preprocess":
            stage.add_argument("--manifest", help="default: results/raw/<dataset>/MANIFEST.json")
            stage.add_argument("--workers", type=int, default=os.cpu_count() or 1)

    train = sub.add_parser(
        "pretrain",
        help="DepthContrast pretraining of one run (torchrun, srun, or the seed's --multiprocessing-distributed)",
    )
    train.add_argument("--config", default="config.yaml")
    train.add_argument("run", help="a name under `pretrain:` in the config (positional, so torchrun passes it through)")
    train.add_argument("--run-json", help=argparse.SUPPRESS)  # the workflow passes the validated run block
    train.add_argument("--shards", nargs="*", default=[], help="shard folders (default: the run's datasets)")
    train.add_argument("--results", default="results")
    train.add_argument("--out", help="output folder (default: results/pretrain/<run>)")
    train.add_argument("--resume", action="store_true", help="continue from <out>/resume/last.pth if present")
    train.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    tasks = train.add_argument_group(
        "task layout (default: the run's `resources:`); inside a Slurm allocation, outside srun, more than one "
        "task is started with srun"
    )
    tasks.add_argument("--nodes", type=int)
    tasks.add_argument("--tasks-per-node", type=int, help="processes per node (one per GPU)")
    tasks.add_argument("--gpus-per-task", type=int, help="0 (CPU) or 1")
    tasks.add_argument("--cpus-per-task", type=int)
    seed_flags = train.add_argument_group("the seed's launcher flags (one node spawns --ngpus processes)")
    seed_flags.add_argument("--multiprocessing-distributed", action="store_true")
    seed_flags.add_argument("--world-size", type=int, default=1, help="number of nodes")
    seed_flags.add_argument("--rank", type=int, default=0, help="this node's rank")
    seed_flags.add_argument("--ngpus", type=int, default=1, help="processes (GPUs) per node")
    seed_flags.add_argument("--dist-url", default="tcp://localhost:15475")
    train.set_defaults(func=cmd_pretrain)

    export = sub.add_parser("export", help="write a checkpoint in a downstream code base's layout + JSON sidecar")
    export.add_argument("checkpoint", help="our checkpoint (results/pretrain/<run>/last.pth or an imported one)")
    export.add_argument("--target", required=True, help="votenet, h3dnet, plain, minkunet_seg or openpcdet")
    export.add_argument("--out", required=True, help="folder for <target>.pth and <target>.json")
    export.set_defaults(func=cmd_export)

    seed = sub.add_parser("import-seed", help="convert a released DepthContrast checkpoint-epNNN.pth.tar into ours")
    seed.add_argument("checkpoint")
    seed.add_argument("--out", required=True, help="the converted checkpoint (.pth)")
    seed.add_argument(
        "--trust-pickle", action="store_true", help="allow arbitrary pickled objects (trusted files only)"
    )
    seed.set_defaults(func=cmd_import_seed)

    summarize = sub.add_parser(
        "summarize", help="each run's state (finished, stopped, failed, not run); results/summary.md of what finished"
    )
    summarize.add_argument("--config", default="config.yaml")
    summarize.add_argument("--results", default="results")
    summarize.set_defaults(func=cmd_summarize)

    inspect = sub.add_parser(
        "inspect", help="summarise a folder of shards and check every shard's sha256 against index.json"
    )
    inspect.add_argument("shard_dir")
    inspect.add_argument("--head", type=int, default=5, help="samples to list")
    inspect.add_argument("--quick", action="store_true", help="only the summary and samples; no sha256 check")
    inspect.set_defaults(func=cmd_inspect)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # to start the same command as srun tasks
    setup_logging(args.log, debug=args.debug)
    try:
        return args.func(args) or 0
    except DepthContrastError as exc:
        if args.debug:
            raise
        print(f"depthcontrast: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("depthcontrast: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
