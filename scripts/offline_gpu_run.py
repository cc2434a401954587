#!/usr/bin/env python3
"""One pretraining run and its built-in evaluation on a GPU machine that cannot reach the internet.

On a machine with this repository, its .venv and the internet, `pack` generates the run's datasets (the download
stage), fetches the wheels the GPU machine lacks and splits everything into tar parts small enough to copy over
one at a time. On the GPU machine (this repository there too, and a Python with torch), `setup` unpacks each part
as it arrives, `start` launches the stages in the background, detached from the shell, and `wait` reports on
them until they end or a time limit passes, so that a session with a per-command limit can poll across commands.

    python scripts/offline_gpu_run.py pack gpu_pointnet --out .offline          # here: .offline/part-<k>/part.tar
    python3 scripts/offline_gpu_run.py setup .offline/part-1 --root /tmp/run    # there, once per part
    python3 scripts/offline_gpu_run.py start gpu_pointnet --root /tmp/run --workers 16
    python3 scripts/offline_gpu_run.py wait --root /tmp/run --until-s 570       # exit 0 done, 3 still running
    python3 scripts/offline_gpu_run.py collect --root /tmp/run --out results_back

The stages are the workflow's own commands (preprocess, pretrain with --resume, evaluate with the run's
evaluation settings, summarize), run in that order, each skipped when its output exists: `start` again after a
lost machine resumes. The GPU time of each stage is in <root>/chain.json and, per protocol, in summary.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CONSTRAINTS = REPO / "envs" / "constraints.txt"
# what the package needs beyond a Python with torch, numpy, h5py, PyYAML, Pillow, scipy, matplotlib and tqdm
WHEELS = ("jsonschema", "jsonschema-specifications", "referencing", "rpds-py", "attrs", "hdf5plugin", "laspy",
          "lazrs", "plyfile")  # fmt: skip
# hdf5plugin's 46 MB wheel, cut to the filters the shard writer uses (data/shards.py), travels as a tar.xz
SLIM_WHEELS = {"hdf5plugin": ("libh5lz4.so", "libh5zstd.so", "libh5blosc.so")}
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")  # fmt: skip
PART_FILE = "part.tar"
CHAIN_FILE = "chain.json"
STILL_RUNNING = 3


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "depthcontrast", *args]


def run_config(config_path: Path, run: str) -> dict:
    """The config with `run` enabled and every other pretraining run off."""
    config = yaml.safe_load(config_path.read_text())
    if run not in config.get("pretrain", {}):
        sys.exit(f"offline_gpu_run: {config_path} has no pretraining run {run!r}")
    for name, block in config["pretrain"].items():
        block["enabled"] = name == run
    return config


def needed(config_file: Path, run: str) -> tuple[list[str], list[str], list[str]]:
    """The datasets `run` pretrains on, those it pretrains or is evaluated on, and its evaluation tasks."""
    from depthcontrast.architectures import evaluated_tasks
    from depthcontrast.config import load_config
    from depthcontrast.specs import EvaluateTask

    config = load_config(config_file)
    tasks = evaluated_tasks(config).get(run, [])
    pretrained_on = list(config["pretrain"][run]["datasets"])
    datasets = list(pretrained_on)
    for name in tasks:
        task = EvaluateTask.from_block(config["evaluate"]["tasks"][name])
        datasets += [task.dataset, *([task.train_dataset] if task.train_dataset else [])]
    return pretrained_on, list(dict.fromkeys(datasets)), tasks


def fetch_wheels(folder: Path, python: str) -> None:
    """The WHEELS for CPython `python` on x86-64 Linux, pinned by envs/constraints.txt; SLIM_WHEELS cut down."""
    folder.mkdir(parents=True, exist_ok=True)
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", python, "--implementation", "cp", *platforms, "-d", str(folder),
                    "-c", str(CONSTRAINTS), *WHEELS], check=True)  # fmt: skip
    for name, keep in SLIM_WHEELS.items():
        for wheel in folder.glob(f"{name}-*.whl"):
            with zipfile.ZipFile(wheel) as archive, tarfile.open(wheel.with_suffix(".tar.xz"), "w:xz") as slim:
                for member in archive.infolist():
                    if "/plugins/" in member.filename and Path(member.filename).name not in keep:
                        continue
                    info = tarfile.TarInfo(member.filename)
                    info.size, info.mode = member.file_size, 0o755
                    with archive.open(member) as data:
                        slim.addfile(info, data)
            wheel.unlink()


def split_into_parts(staging: Path, out: Path, part_bytes: int) -> list[Path]:
    """Every file under `staging`, in order, in tar files out/part-<k>/part.tar of at most `part_bytes` each
    (a file larger than that gets a part of its own)."""
    files = sorted(p for p in staging.rglob("*") if p.is_file())
    parts: list[list[Path]] = [[]]
    size = 0
    for path in files:
        if parts[-1] and size + path.stat().st_size > part_bytes:
            parts.append([])
            size = 0
        parts[-1].append(path)
        size += path.stat().st_size
    written = []
    for k, members in enumerate(parts, start=1):
        tar_path = out / f"part-{k}" / PART_FILE
        tar_path.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tar_path, "w") as tar:
            for path in members:
                tar.add(path, arcname=path.relative_to(staging).as_posix())
        written.append(tar_path)
    return written


def pack(args: argparse.Namespace) -> None:
    staging = args.out / "staging"
    config_file = staging / "config.yaml"
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(yaml.safe_dump(run_config(args.config, args.run), sort_keys=False))
    _, datasets, _ = needed(config_file, args.run)
    for dataset in datasets:
        if not (staging / "results" / "raw" / dataset / "MANIFEST.json").exists():
            results = str(staging / "results")
            subprocess.run(_cli("download", "--dataset", dataset, "--config", str(config_file), "--results", results),
                           check=True)  # fmt: skip
    if not args.no_wheels:
        fetch_wheels(staging / "wheels", args.python)
    for old in args.out.glob(f"part-*/{PART_FILE}"):
        old.unlink()
    parts = split_into_parts(staging, args.out, int(args.part_mb * 2**20))
    for path in parts:
        print(f"{path.parent}: {path.stat().st_size / 2**20:.1f} MiB")


def setup(args: argparse.Namespace) -> None:
    args.root.mkdir(parents=True, exist_ok=True)
    for part in args.parts:
        with tarfile.open(part / PART_FILE) as tar:
            tar.extractall(args.root, filter="data")
    wheels, site = args.root / "wheels", args.root / "site"
    if wheels.is_dir():
        whl = sorted(str(p) for p in wheels.glob("*.whl"))
        if whl:
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                            "--upgrade", "--target", str(site), *whl], check=True)  # fmt: skip
        for slim in wheels.glob("*.tar.xz"):
            with tarfile.open(slim) as tar:
                tar.extractall(site, filter="data")
        for done in [*wheels.glob("*.whl"), *wheels.glob("*.tar.xz")]:
            done.unlink()


def stages(root: Path, run: str, workers: int, device: str) -> list[tuple[str, list[str], Path, Path]]:
    """(name, command, output, log) of every stage, in order: preprocess each dataset, pretrain, evaluate each
    task, summarize."""
    config, results = root / "config.yaml", root / "results"
    pretrained_on, datasets, tasks = needed(config, run)
    common = ["--config", str(config), "--results", str(results)]
    logs, checkpoint = results / "logs", results / "pretrain" / run / "last.pth"
    jobs = []
    for dataset in datasets:
        command = _cli("preprocess", "--dataset", dataset, *common, "--workers", str(workers))
        index = results / "shards" / dataset / "index.json"
        jobs.append((f"preprocess {dataset}", command, index, logs / "preprocess" / f"{dataset}.log"))
    shards = [str(results / "shards" / dataset / "index.json") for dataset in pretrained_on]
    command = _cli("pretrain", run, *common, "--shards", *shards, "--out", str(checkpoint.parent), "--resume",
                   "--device", device)  # fmt: skip
    jobs.append((f"pretrain {run}", command, checkpoint, logs / "pretrain" / f"{run}.log"))
    for task in tasks:
        out = results / "finetune" / run / task
        command = _cli("evaluate", "--task", task, "--run", run, *common, "--checkpoint", str(checkpoint),
                       "--out", str(out))  # fmt: skip
        jobs.append((f"evaluate {task}", command, out / "metrics.json", logs / "finetune" / run / f"{task}.log"))
    command = _cli("summarize", "--results", str(results), "--runs", run, "--evaluations",
                   *[f"{run}/{task}" for task in tasks])  # fmt: skip
    jobs.append(("summarize", command, results / "summary.md", logs / "summary.log"))
    return jobs


def _environment(root: Path) -> dict[str, str]:
    """This process's environment with the unpacked wheels and the repository first on the Python path."""
    paths = [str(root / "site"), str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "PYTHONUNBUFFERED": "1"}


def _write_status(root: Path, status: dict) -> None:
    from depthcontrast.io_utils import atomic_write_json

    atomic_write_json(root / CHAIN_FILE, status)


def _last_line(log: Path, tail_bytes: int = 4096) -> str:
    """The last non-empty line of `log` (from its end only: a pretraining log grows to many MB)."""
    if not log.exists():
        return ""
    with open(log, "rb") as handle:
        handle.seek(max(0, log.stat().st_size - tail_bytes))
        lines = handle.read().decode(errors="replace").replace("\r", "\n").split("\n")
    return next((line.strip() for line in reversed(lines) if line.strip()), "")


def chain(args: argparse.Namespace) -> int:
    """Run every stage in order (skipping those whose output exists), recording each one in chain.json."""
    jobs = stages(args.root, args.run, args.workers, args.device)
    status = {"run": args.run, "pid": os.getpid(), "state": "running",
              "stages": [{"name": job[0], "state": "pending"} for job in jobs]}  # fmt: skip
    _write_status(args.root, status)
    for entry, (_, command, output, log) in zip(status["stages"], jobs, strict=True):
        if output.exists():
            entry["state"] = "skipped"
            continue
        log.parent.mkdir(parents=True, exist_ok=True)
        entry.update(state="running", started=time.time(), log=str(log))
        _write_status(args.root, status)
        with open(log, "a") as stream:  # a resumed stage's log goes on
            done = subprocess.run(command, env=_environment(args.root), stdout=stream, stderr=subprocess.STDOUT)
        entry.update(seconds=round(time.time() - entry["started"], 1))
        if done.returncode != 0 or not output.exists():
            entry.update(state="failed", error=log.read_text(errors="replace").strip().splitlines()[-5:])
            status["state"] = "failed"
            _write_status(args.root, status)
            return 1
        entry["state"] = "done"
        _write_status(args.root, status)
    status["state"] = "done"
    _write_status(args.root, status)
    return 0


def start(args: argparse.Namespace) -> None:
    """`chain` in a new process session, so that it outlives the command that started it."""
    command = [sys.executable, str(Path(__file__).resolve()), "chain", args.run, "--root", str(args.root),
               "--workers", str(args.workers), "--device", args.device]  # fmt: skip
    (args.root / CHAIN_FILE).unlink(missing_ok=True)
    with open(args.root / "chain.stdout", "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                   env=_environment(args.root))  # fmt: skip
    while not (args.root / CHAIN_FILE).exists():  # written once the stages are known
        if process.poll() is not None:
            sys.exit(f"offline_gpu_run: the stages did not start; see {args.root / 'chain.stdout'}")
        time.sleep(0.2)
    print(f"started the stages of {args.run} (pid {process.pid}); `wait --root {args.root}` reports on them")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait(args: argparse.Namespace) -> int:
    """Report on the stages every `--every-s` until they end (0, or 1 when one failed) or `--until-s` passes (3)."""
    deadline = time.monotonic() + args.until_s
    if not (args.root / CHAIN_FILE).exists():
        sys.exit(f"offline_gpu_run: no {args.root / CHAIN_FILE}: `start` the stages first")
    while True:
        status = json.loads((args.root / CHAIN_FILE).read_text())
        running = [s for s in status["stages"] if s["state"] == "running"]
        done = [f"{s['name']} {s['seconds']:.0f} s" for s in status["stages"] if s["state"] == "done"]
        now = time.strftime("%H:%M:%S")
        if running:
            stage = running[0]
            last = _last_line(Path(stage["log"]))[-160:]
            print(f"[{now}] {stage['name']} for {time.time() - stage['started']:.0f} s ({last}); done: "
                  f"{', '.join(done) or 'none'}", flush=True)  # fmt: skip
        if status["state"] != "running":
            failed = [s for s in status["stages"] if s["state"] == "failed"]
            for stage in failed:
                print(f"{stage['name']} failed:", *stage.get("error", []), sep="\n  ")
            print(f"[{now}] {status['state']}; done: {', '.join(done) or 'none'}")
            return 1 if failed else 0
        if not _alive(status["pid"]):
            print(f"the stages' process {status['pid']} is gone (machine restarted?): `start` again resumes")
            return 1
        if time.monotonic() + args.every_s > deadline:
            return STILL_RUNNING
        time.sleep(args.every_s)


def write_encoder(checkpoint: Path, out: Path) -> None:
    """The point query encoder of `checkpoint` alone, in a checkpoint that `depthcontrast evaluate` reads (a
    few MB, where the whole state with key encoder, queue and optimizer can be hundreds)."""
    from depthcontrast.checkpoint import load_checkpoint, save_checkpoint
    from depthcontrast.evaluate.backbone import QUERY_ENCODER_PREFIX

    state = load_checkpoint(checkpoint)
    model = {key: value for key, value in state["model"].items() if key.startswith(QUERY_ENCODER_PREFIX)}
    kept = {key: state[key] for key in ("epoch", "step", "config", "run_name") if key in state}
    save_checkpoint(out, {**kept, "model": model, "optimizer": {}})


def collect(args: argparse.Namespace) -> None:
    """summary.md, chain.json, a tar.gz of the metrics, settings and logs, and each finished run's point encoder
    (<run>.encoder.pth), into `--out`."""
    results = args.root / "results"
    args.out.mkdir(parents=True, exist_ok=True)
    for checkpoint in sorted(results.glob("pretrain/*/last.pth")):
        write_encoder(checkpoint, args.out / f"{checkpoint.parent.name}.encoder.pth")
    for path in (results / "summary.md", args.root / CHAIN_FILE):
        if path.exists():
            (args.out / path.name).write_bytes(path.read_bytes())
    patterns = ("finetune/*/*/metrics.json", "pretrain/*/metrics.csv", "pretrain/*/config.yaml", "logs/**/*.log")
    with tarfile.open(args.out / "results.tar.gz", "w:gz") as tar:
        for pattern in patterns:
            for path in sorted(results.glob(pattern)):
                tar.add(path, arcname=path.relative_to(results).as_posix())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = parser.add_subparsers(dest="verb", required=True)
    p = verbs.add_parser("pack", help="here: datasets, wheels, config, in parts")
    p.add_argument("run")
    p.add_argument("--config", type=Path, default=REPO / "config.yaml")
    p.add_argument("--out", type=Path, default=REPO / ".offline")
    p.add_argument("--part-mb", type=float, default=56.0, help="MiB per part (default 56)")
    p.add_argument("--python", default="3.12", help="the GPU machine's Python (default 3.12)")
    p.add_argument("--no-wheels", action="store_true", help="the GPU machine has every package")
    p = verbs.add_parser("setup", help="there: unpack parts (wheels into <root>/site)")
    p.add_argument("parts", type=Path, nargs="+")
    p.add_argument("--root", type=Path, required=True)
    for name, help_text in (("start", "there: run the stages in the background"), ("chain", "run them here")):
        p = verbs.add_parser(name, help=help_text)
        p.add_argument("run")
        p.add_argument("--root", type=Path, required=True)
        p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="preprocess workers")
        p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p = verbs.add_parser("wait", help="there: report until the stages end or --until-s passes")
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--until-s", type=float, default=570.0)
    p.add_argument("--every-s", type=float, default=30.0)
    p = verbs.add_parser("collect", help="there: the results to bring back")
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    # the package from this repository, its missing dependencies from <root>/site, where it is not installed
    sys.path[:0] = [*([str(args.root / "site")] if "root" in args else []), str(REPO)]
    verb = {"pack": pack, "setup": setup, "start": start, "chain": chain, "wait": wait, "collect": collect}
    return verb[args.verb](args) or 0


if __name__ == "__main__":
    sys.exit(main())
