"""`depthcontrast` command line: one verb per stage, each calling one function of the package, and one-line errors
for user mistakes.

A stage verb reads its settings from a config file (--config, default config.yaml) or, as the workflow's rules
call it, from the settings file that the workflow wrote for the job (--settings; see depthcontrast.stages.settings).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from depthcontrast import __version__
from depthcontrast.architectures import KNOWN_TARGETS, VOXEL_STACKS
from depthcontrast.errors import DepthContrastError
from depthcontrast.log import setup_logging

log = logging.getLogger("depthcontrast")
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C (= train.EXIT_INTERRUPTED)
SHARD_INDEX = "index.json"  # = data.shards.INDEX_NAME (not imported: h5py for every command)


def _config(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """The validated --settings file that a workflow rule wrote, else the validated --config file; and its path."""
    if args.settings:
        from depthcontrast.stages.settings import read_settings

        return read_settings(args.settings), args.settings
    from depthcontrast.config import load_config

    return load_config(args.config), args.config


def _block(args: argparse.Namespace, *key: str) -> Any:
    """The block at `key` (e.g. "datasets", "demo_indoor") of the settings or config file."""
    from depthcontrast.stages.settings import config_block

    config, source = _config(args)
    return config_block(config, key, source)


def _out(args: argparse.Namespace, *default: str) -> Path:
    """--out, else its default under --results."""
    return Path(args.out) if args.out else Path(args.results).joinpath(*default)


def _shard_folder(path: str) -> Path:
    """A shard folder, given as itself or as its index.json (what a rule has as input)."""
    return Path(path).parent if Path(path).name == SHARD_INDEX else Path(path)


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
    from depthcontrast.stages.kicad import run_kicad_download

    source = _block(args, "datasets", args.dataset, "source")
    download = run_kicad_download if source["kind"] == "kicad" else run_download
    download(args.dataset, source, _out(args, "raw", args.dataset))


def cmd_preprocess(args: argparse.Namespace) -> None:
    from depthcontrast.stages.kicad import run_kicad_preprocess
    from depthcontrast.stages.preprocess import run_preprocess

    manifest = Path(args.manifest or Path(args.results) / "raw" / args.dataset / "MANIFEST.json")
    dataset = _block(args, "datasets", args.dataset)
    preprocess = run_kicad_preprocess if dataset["source"]["kind"] == "kicad" else run_preprocess
    summary = preprocess(args.dataset, dataset, manifest, _out(args, "shards", args.dataset), workers=args.workers)
    print(json.dumps(summary, sort_keys=True))


def _single_threaded_openmp(args: argparse.Namespace) -> None:
    """Restart this command with OMP_NUM_THREADS=1 unless it has it: spconv's CPU kernels lose sums now and then
    unless the process starts with one OpenMP thread (setting the thread counts later does not help)."""
    if os.environ.get("OMP_NUM_THREADS") == "1" or not args.from_command_line:
        return
    log.info("voxel run: restarting with OMP_NUM_THREADS=1 (spconv's CPU kernels are exact only so)")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    os.execve(sys.executable, [sys.executable, "-m", "depthcontrast", *args.argv], env)


def cmd_pretrain(args: argparse.Namespace) -> int:
    from depthcontrast.slurm import TaskLayout
    from depthcontrast.stages.pretrain import OriginalLaunch, run_pretrain

    run = _block(args, "pretrain", args.run)
    if "voxel" in run["representations"] and args.device != "cuda":
        _single_threaded_openmp(args)
    shards = [_shard_folder(path) for path in args.shards]
    shards = shards or [Path(args.results) / "shards" / dataset for dataset in run["datasets"]]
    flags = {"nodes": args.nodes, "tasks_per_node": args.tasks_per_node, "gpus_per_task": args.gpus_per_task,
             "cpus_per_task": args.cpus_per_task}  # fmt: skip
    given = {name: value for name, value in flags.items() if value is not None}
    layout = dataclasses.replace(TaskLayout.of_run(run["resources"]), **given)
    original = (OriginalLaunch(args.world_size, args.rank, args.ngpus, args.dist_url)
                if args.multiprocessing_distributed else None)  # fmt: skip
    return run_pretrain(args.run, run, shards, _out(args, "pretrain", args.run), layout, args.argv, resume=args.resume,
                        device=args.device, original=original, debug=args.debug)  # fmt: skip


def cmd_export(args: argparse.Namespace) -> None:
    from depthcontrast.export import export_checkpoint

    weights, sidecar = export_checkpoint(Path(args.checkpoint), args.target, Path(args.out))
    print(f"{weights}\n{sidecar}")


def cmd_import_original(args: argparse.Namespace) -> None:
    from depthcontrast.export import import_original_checkpoint

    if args.command == "import-seed":
        log.warning("`depthcontrast import-seed` is deprecated and goes away in the next release: "
                    "use `depthcontrast import-original`")  # fmt: skip
    checkpoint, out = Path(args.checkpoint), Path(args.out)
    print(import_original_checkpoint(checkpoint, out, trust_pickle=args.trust_pickle, voxel_stack=args.voxel_stack))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from depthcontrast.evaluate import run_evaluation
    from depthcontrast.stages.settings import config_block, evaluation_of_run

    config, source = _config(args)
    task = config_block(config, ("evaluate", "tasks", args.task), source)
    if args.run is not None:
        config_block(config, ("pretrain", args.run), source)
    settings = evaluation_of_run(config, args.run)
    shards = _shard_folder(args.shards) if args.shards else Path(args.results) / "shards" / task["dataset"]
    train_shards = None
    if "train_dataset" in task:
        train_shards = _shard_folder(args.train_shards or Path(args.results) / "shards" / task["train_dataset"])
    run_evaluation(args.task, task, settings, shards, Path(args.checkpoint), Path(args.out), train_shards)
    print(Path(args.out) / "metrics.json")


def cmd_external(args: argparse.Namespace) -> None:
    from depthcontrast.external import run_external

    job = _block(args, "external", args.job)
    weights = Path(args.weights or Path(args.results) / "export" / job["run"] / f"{job['target']}.pth")
    out = _out(args, "finetune", "external", args.job)
    run_external(args.job, job, weights, out)
    print(out / "done.json")


def cmd_summarize(args: argparse.Namespace) -> int:
    from depthcontrast.report import summarize_results

    if args.runs is None:
        from depthcontrast.architectures import evaluated_tasks
        from depthcontrast.config import load_config

        tasks = evaluated_tasks(load_config(args.config))  # every enabled run -> its evaluation tasks
    else:
        tasks = {run: [] for run in args.runs}
        for evaluation in args.evaluations:
            run, _, task = evaluation.partition("/")
            tasks.setdefault(run, []).append(task)
    statuses = summarize_results(Path(args.results), list(tasks), tasks)
    for status in statuses:
        print(status.line())
    print(f"wrote {Path(args.results) / 'summary.md'}", file=sys.stderr)
    return 0 if all(status.complete for status in statuses) else 1


def cmd_inspect(args: argparse.Namespace) -> None:
    from depthcontrast.stages.inspect import inspect_shards

    print("\n".join(inspect_shards(Path(args.shard_dir), head=args.head, quick=args.quick)))


def _settings_source(verb: argparse.ArgumentParser) -> None:
    """--config or --settings, and --results (where the verb's inputs and outputs are by default)."""
    source = verb.add_mutually_exclusive_group()
    source.add_argument("--config", default="config.yaml", help="the config file (default: config.yaml)")
    source.add_argument(
        "--settings", help="the settings file the workflow wrote for this job (results/settings/<stage>/<name>.yaml)"
    )
    verb.add_argument("--results", default="results", help="results folder (default: results)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="depthcontrast", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="full tracebacks and debug logs")
    parser.add_argument(
        "--log", help="append everything the command writes (logs, progress, errors, output) to this file"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    validate = sub.add_parser("validate-config", help="check a config file against the schema")
    validate.add_argument("config", nargs="?", default="config.yaml")
    validate.add_argument("--print", action="store_true", help="print the config with defaults filled")
    validate.set_defaults(func=cmd_validate)

    download = sub.add_parser("download", help="fetch or locate a dataset's raw files; write MANIFEST.json")
    preprocess = sub.add_parser("preprocess", help="decode raw files into HDF5 shards + index.json + quarantine.json")
    for stage, folder in ((download, "raw"), (preprocess, "shards")):
        stage.add_argument("--dataset", required=True, help="a name under `datasets:` in the config")
        _settings_source(stage)
        stage.add_argument("--out", help=f"output folder (default: <results>/{folder}/<dataset>)")
    download.set_defaults(func=cmd_download)
    preprocess.add_argument("--manifest", help="default: <results>/raw/<dataset>/MANIFEST.json")
    preprocess.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    preprocess.set_defaults(func=cmd_preprocess)

    train = sub.add_parser(
        "pretrain",
        help="DepthContrast pretraining of one run (torchrun, srun, or the original code's "
        "--multiprocessing-distributed)",
    )
    train.add_argument("run", help="a name under `pretrain:` in the config (positional, so torchrun passes it through)")
    _settings_source(train)
    train.add_argument(
        "--shards",
        nargs="*",
        default=[],
        help="shard folders or their index.json (default: <results>/shards/<dataset> of the run's)",
    )
    train.add_argument("--out", help="output folder (default: <results>/pretrain/<run>)")
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
    launcher = train.add_argument_group(
        "the original DepthContrast code's launcher flags (one node spawns --ngpus processes)"
    )
    launcher.add_argument("--multiprocessing-distributed", action="store_true")
    launcher.add_argument("--world-size", type=int, default=1, help="number of nodes")
    launcher.add_argument("--rank", type=int, default=0, help="this node's rank")
    launcher.add_argument("--ngpus", type=int, default=1, help="processes (GPUs) per node")
    launcher.add_argument("--dist-url", default="tcp://localhost:15475")
    train.set_defaults(func=cmd_pretrain)

    export = sub.add_parser("export", help="write a checkpoint in a downstream code base's layout + JSON sidecar")
    export.add_argument("checkpoint", help="our checkpoint (results/pretrain/<run>/last.pth or an imported one)")
    export.add_argument("--target", required=True, choices=KNOWN_TARGETS)
    export.add_argument("--out", required=True, help="folder for <target>.pth and <target>.json")
    export.set_defaults(func=cmd_export)

    original = sub.add_parser(
        "import-original", aliases=["import-seed"],
        help="convert a released checkpoint-epNNN.pth.tar of the original DepthContrast code into ours "
             "(import-seed: deprecated name)",
    )  # fmt: skip
    original.add_argument("checkpoint")
    original.add_argument("--out", required=True, help="the converted checkpoint (.pth)")
    original.add_argument(
        "--trust-pickle", action="store_true", help="allow arbitrary pickled objects (trusted files only)"
    )
    original.add_argument(
        "--voxel-stack", choices=VOXEL_STACKS, default=VOXEL_STACKS[0],
        help="joint models: the sparse-conv library of the imported MinkUNet34 voxel encoders (default: spconv)",
    )  # fmt: skip
    original.set_defaults(func=cmd_import_original)

    evaluate = sub.add_parser(
        "evaluate", help="the built-in evaluation: a checkpoint's point encoder against scratch on one task"
    )
    evaluate.add_argument("--task", required=True, help="a name under `evaluate.tasks:` in the config")
    evaluate.add_argument("--checkpoint", required=True, help="results/pretrain/<run>/last.pth or an imported one")
    evaluate.add_argument("--run", help="apply this pretraining run's `evaluation:` overrides (default: none)")
    _settings_source(evaluate)
    evaluate.add_argument("--shards", help="shard folder or its index.json (default: <results>/shards/<its dataset>)")
    evaluate.add_argument(
        "--train-shards", help="the task's train_dataset shards (default: <results>/shards/<its train_dataset>)"
    )
    evaluate.add_argument("--out", required=True, help="folder for metrics.json (the workflow's: <results>/finetune/"
                          "<run>/<task>)")  # fmt: skip
    evaluate.set_defaults(func=cmd_evaluate)

    external = sub.add_parser(
        "external", help="run an `external:` job (a downstream code base's own finetuning) on exported weights"
    )
    external.add_argument("--job", required=True, help="a name under `external:` in the config")
    _settings_source(external)
    external.add_argument("--weights", help="default: <results>/export/<job's run>/<job's target>.pth")
    external.add_argument("--out", help="folder for done.json (default: <results>/finetune/external/<job>)")
    external.set_defaults(func=cmd_external)

    summarize = sub.add_parser(
        "summarize", help="each run's state (finished, stopped, failed, not run); results/summary.md of what finished"
    )
    summarize.add_argument("--config", default="config.yaml", help="its enabled runs and their evaluation tasks")
    summarize.add_argument("--results", default="results")
    summarize.add_argument("--runs", nargs="*", help="these runs instead of the config's (as the workflow's rule)")
    summarize.add_argument("--evaluations", nargs="*", default=[], metavar="RUN/TASK", help="with --runs")
    summarize.set_defaults(func=cmd_summarize)

    inspect = sub.add_parser(
        "inspect", help="summarise a folder of shards and check every shard's sha256 against index.json"
    )
    inspect.add_argument("shard_dir")
    inspect.add_argument("--head", type=int, default=5, help="samples to list")
    inspect.add_argument("--quick", action="store_true", help="only the summary and samples; no sha256 check")
    inspect.set_defaults(func=cmd_inspect)
    return parser


def _append_output_to(log_file: str) -> None:
    """Send this process's stdout and stderr, and so its children's (srun, DataLoader workers, an external job's
    command), to the end of `log_file`: file descriptors 1 and 2 themselves, not only Python's streams."""
    Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    descriptor = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    os.dup2(descriptor, sys.stdout.fileno())
    os.dup2(descriptor, sys.stderr.fileno())
    os.close(descriptor)
    sys.stdout.reconfigure(line_buffering=True)  # printed lines stay in order with the log lines


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # to start the same command as srun tasks
    args.from_command_line = argv is None  # a process of its own, which may restart itself
    if args.log:
        _append_output_to(args.log)
    setup_logging(None, debug=args.debug)
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
