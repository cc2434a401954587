"""The pretraining loop: one process per GPU (or one CPU process), resumable bit-for-bit.

`pretrain` (and `Trainer`) take a run's validated config block and parse it once into a RunSpec
(depthcontrast.specs); the modules below get its typed parts. The block itself is only stored: in every
checkpoint (compared key by key on resume) and in config.yaml.

Files under the run's output folder:
  resume/last.pth     rolling checkpoint (every epoch, and on SIGTERM/SIGUSR1/SIGINT); `--resume` reads it
  resume/metrics.csv  rows up to the rolling checkpoint's step
  checkpoint-ep{E}.pth  weights after E finished epochs, every `checkpoint_every_epochs`
  last.pth, metrics.csv, config.yaml   written when the run completes (the workflow's outputs)
"""

from __future__ import annotations

import itertools
import logging
import math
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from depthcontrast.checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from depthcontrast.data.gpu_augment import DeviceViews, view_generator
from depthcontrast.data.sampler import ResumableDistributedSampler
from depthcontrast.data.shards import read_index
from depthcontrast.data.views import CLOUDS, build_view_dataset, collate_views
from depthcontrast.errors import ConfigError, DepthContrastError
from depthcontrast.io_utils import atomic_write_bytes
from depthcontrast.launch import WorldInfo, destroy_process_group, device_for, init_process_group
from depthcontrast.log import progress_bar
from depthcontrast.lr_schedule import learning_rate
from depthcontrast.method import DepthContrast
from depthcontrast.metrics_log import MetricsLog
from depthcontrast.models.encoders import build_point_encoder, build_voxel_encoder
from depthcontrast.models.pointnet2 import fuse_point_blocks
from depthcontrast.specs import RunSpec, parse_run
from depthcontrast.stop_signals import EXIT_INTERRUPTED, EXIT_REQUEUE, StopFlag, ignore_stop_signals

log = logging.getLogger(__name__)
__all__ = ["EXIT_INTERRUPTED", "EXIT_REQUEUE", "Trainer", "build_model", "learning_rate", "pretrain"]
# settings that may change between a checkpoint and its resumption (extend a run, change logging)
RESUMABLE_CHANGES = (
    "epochs", "log_every_steps", "checkpoint_every_epochs", "num_workers", "verify_shards", "enabled", "export_targets",
    "compile",
)  # fmt: skip
VIEW_KEYS = {"point": ("view_a", "view_b"), "voxel": ("voxel_a", "voxel_b")}  # a batch's (query, key) views


def build_model(spec: RunSpec) -> DepthContrast:
    """DepthContrast with the encoders of the run's representations: the point encoder of its `backbone`
    (PointNet++ SSG or MSG) and/or the voxel encoder of its `voxel_backbone` (sparse UNet, MinkUNet34)."""
    loss = spec.loss
    makers = {
        "point": lambda: build_point_encoder(spec.backbone, loss.embedding_dim),
        "voxel": lambda: build_voxel_encoder(spec.voxel_backbone, loss.embedding_dim),
    }
    return DepthContrast(
        {name: makers[name] for name in spec.representations},
        queue_size=loss.num_negatives,
        embedding_dim=loss.embedding_dim,
        temperature=loss.temperature,
        momentum=loss.momentum,
        loss_types=loss.loss_types,
        within_format_weights=loss.within_format_weights,
        across_format_weights=loss.across_format_weights,
    )


def _to_device(batch: Any, device: torch.device) -> Any:
    """A view batch (tensor, or a voxel dict of tensors and its batch_size) on `device`."""
    if isinstance(batch, Mapping):
        return {key: _to_device(value, device) for key, value in batch.items()}
    return batch.to(device, non_blocking=True) if isinstance(batch, torch.Tensor) else batch


class TrainingDiverged(DepthContrastError):
    """The loss became NaN or inf."""


def _rng_states_of_all_ranks(world: WorldInfo) -> list[dict[str, Any]]:
    state = capture_rng_state()
    if not world.distributed:
        return [state]
    gathered: list[Any] = [None] * world.world_size
    dist.all_gather_object(gathered, state)
    return gathered


def _changed_settings(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    keys = set(saved) | set(current)
    return sorted(k for k in keys if k not in RESUMABLE_CHANGES and saved.get(k) != current.get(k))


def check_batch_fits(run_name: str, batch_size: int, shard_dirs: Sequence[Path], world_size: int) -> None:
    """ConfigError unless the shards fill one global batch; reads only their index.json (nothing is hashed)."""
    samples = sum(read_index(d).num_samples for d in shard_dirs)
    if samples >= batch_size * world_size:
        return
    processes = f"{world_size} processes" if world_size > 1 else "1 process"
    fix = (f"set it to at most {samples // world_size}" if samples >= world_size
           else f"use at most {samples} processes")  # fmt: skip
    raise ConfigError(
        f"pretrain.{run_name}.batch_size: {batch_size} per process x {processes} needs at least "
        f"{batch_size * world_size} samples, but {', '.join(map(str, shard_dirs))} hold {samples} samples; {fix} "
        "or pretrain on more data"
    )


class Trainer:
    """Holds the run's model, optimizer, data and position; `fit()` trains to the configured epochs."""

    def __init__(
        self, run_name: str, settings: Mapping[str, Any], shard_dirs: Sequence[Path], out_dir: Path,
        world: WorldInfo, device: str = "auto",
    ):  # fmt: skip
        """`settings`: the run's validated config block, parsed here into `self.run` (a RunSpec) and otherwise
        only stored (`self.settings`: in checkpoints and config.yaml)."""
        self.run_name, self.settings, self.world = run_name, dict(settings), world
        self.run = run = parse_run(settings)
        check_batch_fits(run_name, run.batch_size, shard_dirs, world.world_size)
        self.out_dir = Path(out_dir)
        self.resume_dir = self.out_dir / "resume"
        self.device = device_for(world, device)
        init_process_group(world, self.device)
        if run.deterministic:
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        if "voxel" in run.representations and self.device.type == "cpu" and torch.get_num_threads() > 1:
            # spconv 2.3.8's CPU kernels with several threads lose some sums (a few output rows wrong, run to
            # run) and spin-wait on busy machines; on one thread they are exact, reproducible and often faster
            log.info("voxel run on CPU: using 1 thread (was %d): spconv's CPU kernels are exact only on one",
                     torch.get_num_threads())  # fmt: skip
            torch.set_num_threads(1)
        torch.manual_seed(run.seed)  # identical initial weights and queues on every rank

        self.dataset = build_view_dataset(shard_dirs, run)
        # augment_on: gpu: the loader brings cut clouds, and _inputs makes their point views on self.device
        self.device_views = DeviceViews(run.views.transforms) if self.dataset.augments_on_device else None
        self.sampler = ResumableDistributedSampler(
            len(self.dataset), run.batch_size, world.world_size, world.rank, seed=run.seed
        )
        self.model = build_model(run).to(self.device)
        if run.compile and self.device.type == "cuda":
            log.info("torch.compile: %d point blocks (the first steps compile them)", fuse_point_blocks(self.model))
        self.model.check_global_batch(run.batch_size * world.world_size)
        self.module: torch.nn.Module = self.model
        if world.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.module = DistributedDataParallel(self.model, device_ids=ids)
        opt = run.optimizer
        self.optimizer = torch.optim.SGD(
            [p for p in self.model.parameters() if p.requires_grad],
            lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay, nesterov=opt.nesterov,
        )  # fmt: skip
        use_bf16 = run.precision == "bf16" and self.device.type == "cuda"
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else nullcontext()
        self.epoch, self.batch, self.global_step = 0, 0, 0
        # wall seconds of the attempts before the checkpoint resumed from, and when this attempt's training began
        self.train_seconds, self._fit_started = 0.0, time.perf_counter()
        self.metrics = MetricsLog(self.resume_dir / "metrics.csv", enabled=world.is_main)
        self.loader = DataLoader(
            self.dataset, batch_size=run.batch_size, sampler=self.sampler, num_workers=run.num_workers,
            pin_memory=self.device.type == "cuda", drop_last=True, persistent_workers=run.num_workers > 0,
            worker_init_fn=ignore_stop_signals,
            # its own generator: starting the workers draws a seed, which must not move the global RNG
            # (the key batch shuffle's), or a resumed run would diverge from an uninterrupted one
            generator=torch.Generator().manual_seed(run.seed), collate_fn=collate_views,
        )  # fmt: skip

    # ----------------------------------------------------------------------------------- state
    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": {"name": self.run.schedule.name, "lr": self.optimizer.param_groups[0]["lr"]},
            "epoch": self.epoch,
            "batch": self.batch,
            "step": self.global_step,
            "train_seconds": self.run_seconds(),
            "world_size": self.world.world_size,
            "rng": _rng_states_of_all_ranks(self.world),
            "run_name": self.run_name,
            "config": self.settings,
        }

    def save(self, path: Path) -> None:
        state = self.state()  # collective: every rank takes part
        if self.world.is_main:
            save_checkpoint(path, state)
            log.info("checkpoint %s (epoch %d, batch %d, step %d)", path, self.epoch, self.batch, self.global_step)
        if self.world.distributed:  # no rank exits (srun --kill-on-bad-exit) before rank 0 has written the file
            dist.barrier()

    def resume(self) -> bool:
        """Continue from resume/last.pth if it exists; False when there is nothing to resume."""
        path = self.resume_dir / "last.pth"
        if not path.exists():
            log.info("no checkpoint at %s: starting from scratch", path)
            return False
        state = load_checkpoint(path, map_location=self.device)
        changed = _changed_settings(state["config"], self.settings)
        if changed:
            if self.world.is_main:
                old = self.resume_dir.with_name("resume.old")
                shutil.rmtree(old, ignore_errors=True)
                self.resume_dir.rename(old)
            log.warning(
                "settings %s changed since %s: starting from scratch (old state in resume.old/)",
                changed,
                path,
            )
            return False
        if state["world_size"] != self.world.world_size:
            log.warning("resuming a %d-process checkpoint with %d processes: the data order changes",
                        state["world_size"], self.world.world_size)  # fmt: skip
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.batch, self.global_step = state["epoch"], state["batch"], state["step"]
        self.train_seconds = state.get("train_seconds", 0.0)  # absent in checkpoints of older versions
        rng = state["rng"]
        restore_rng_state(rng[self.world.rank] if self.world.rank < len(rng) else rng[0])
        self.metrics.truncate_after(self.global_step)
        log.info("resumed from %s at epoch %d, batch %d", path, self.epoch, self.batch)
        return True

    # ----------------------------------------------------------------------------------- loop
    def _loader(self) -> DataLoader:
        """The persistent loader, positioned at the current epoch and batch, running on to the last epoch."""
        self.sampler.set_position(self.epoch, self.batch, self.run.epochs)
        return self.loader

    def _inputs(self, batch: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
        """Each representation's (query, key) views on the device; with augment_on: gpu the point views are made
        here from the batch's cut clouds, by a generator seeded from (seed, epoch, batch, rank)."""
        inputs = {}
        for name in self.model.representations:
            if name == "point" and self.device_views is not None:
                generator = view_generator(self.run.seed, self.epoch, self.batch, self.world.rank, self.device)
                clouds = _to_device(batch[CLOUDS], self.device)
                inputs[name] = self.device_views(clouds, batch["count"], generator)  # counts checked on the host
            else:
                inputs[name] = tuple(_to_device(batch[key], self.device) for key in VIEW_KEYS[name])
        return inputs

    def _step(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        inputs = self._inputs(batch)
        with self.autocast:
            loss, terms = self.module(inputs)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.run.grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.run.grad_clip_norm)
        self.optimizer.step()
        return loss, terms

    def fit(self) -> int:
        """Train to the configured epochs; returns 0 when done, else (checkpointed at a step boundary) EXIT_REQUEUE
        after SIGTERM/SIGUSR1 or EXIT_INTERRUPTED after SIGINT."""
        stop = StopFlag()
        try:
            code = self._fit(stop)
        finally:  # also when a second SIGINT aborts: the workers must not outlive this (they would hang the exit)
            stop.ignore()
            self._stop_workers()
            stop.restore()
        if code == EXIT_INTERRUPTED:
            log.warning("interrupted (SIGINT): checkpointed at step %d; rerun with --resume to continue",
                        self.global_step)  # fmt: skip
        elif code == EXIT_REQUEUE:
            log.warning("signal %s: checkpointed at step %d; exit %d to be requeued",
                        stop.signal, self.global_step, EXIT_REQUEUE)  # fmt: skip
        return code

    def _stop_workers(self) -> None:
        """End the persistent DataLoader workers now. torch has no public call for it, and workers left to
        interpreter exit (a traceback keeps the trainer alive until then) are never ended: torch's clean-up does
        nothing once the interpreter exits (its atexit one covers pin_memory loaders only), and multiprocessing
        SIGTERMs them, which they ignore (ignore_stop_signals), then waits for them forever."""
        workers = self.loader._iterator  # set by the first epoch's iter() when num_workers > 0
        if workers is not None:
            workers._shutdown_workers()
            self.loader._iterator = None

    def run_seconds(self) -> float:
        """Wall seconds of training so far: the attempts before the checkpoint resumed from, plus this one's."""
        return self.train_seconds + time.perf_counter() - self._fit_started

    def _fit(self, stop: StopFlag) -> int:
        self._fit_started = time.perf_counter()
        self.module.train()
        batches = iter(self._loader())  # one pass over every epoch left: no refill of the prefetch at epoch starts
        while self.epoch < self.run.epochs:
            code = self._epoch(stop, batches)
            if code:
                return code
            self.epoch, self.batch = self.epoch + 1, 0
            self.save(self.resume_dir / "last.pth")
            if self.epoch % self.run.checkpoint_every_epochs == 0 or self.epoch == self.run.epochs:
                self.save(self.out_dir / f"checkpoint-ep{self.epoch}.pth")
        self._finish()
        return 0

    def _epoch(self, stop: StopFlag, batches: Iterator[Mapping[str, Any]]) -> int:
        """The rest of the current epoch, taken from `batches`; 0, or the exit code of a stop signal once its
        checkpoint is written."""
        run, steps = self.run, self.sampler.batches_per_epoch
        tick = time.perf_counter()
        # a context, not a wrapped iterator: the bar's last line comes before any message about the stop
        with progress_bar(desc=f"epoch {self.epoch}", total=steps - self.batch, unit="batch",
                          disable=not self.world.is_main) as bar:  # fmt: skip
            for batch in itertools.islice(batches, steps - self.batch):
                data_s = time.perf_counter() - tick
                lr = learning_rate(run, self.epoch, self.batch, steps)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                loss, terms = self._step(batch)
                self.batch += 1
                self.global_step += 1
                bar.update()
                if self.global_step % run.log_every_steps == 0 or self.batch == steps:
                    self._log_step(loss, terms, lr, data_s, tick)
                code = stop.agreed(self.world)
                if code:
                    self.save(self.resume_dir / "last.pth")
                    return code
                tick = time.perf_counter()
        return 0

    def _log_step(self, loss: torch.Tensor, terms: Mapping[str, torch.Tensor], lr: float, data_s: float,
                  tick: float) -> None:  # fmt: skip
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - tick
        row = {
            "epoch": self.epoch, "step": self.batch, "global_step": self.global_step, "lr": f"{lr:.6g}",
            "loss": f"{loss.item():.6f}", "data_s": f"{data_s:.4f}", "compute_s": f"{elapsed - data_s:.4f}",
            "samples_per_s": f"{self.run.batch_size * self.world.world_size / max(elapsed, 1e-9):.2f}",
            "samples": self.global_step * self.run.batch_size * self.world.world_size,
            "run_s": f"{self.run_seconds():.1f}",
        }  # fmt: skip
        row.update({name: f"{value.item():.6f}" for name, value in terms.items()})
        if not math.isfinite(float(row["loss"])):
            raise TrainingDiverged(
                f"pretrain {self.run_name}: the loss became {row['loss']} at step {self.global_step} (lr {lr:.4g}); "
                "lower optimizer.lr, set grad_clip_norm, or use denser views (points_per_view) for the SA radii; "
                f"--resume continues from {self.resume_dir / 'last.pth'}"
            )
        if self.device.type == "cuda":
            row["gpu_mem_gib"] = f"{torch.cuda.max_memory_allocated(self.device) / 2**30:.2f}"
        self.metrics.append(row)
        log.info("epoch %d step %d/%d loss %s lr %s %s samples/s (data %.3fs, compute %.3fs)",
                 self.epoch, self.batch, self.sampler.batches_per_epoch, row["loss"], row["lr"],
                 row["samples_per_s"], data_s, elapsed - data_s)  # fmt: skip

    def _finish(self) -> None:
        self.save(self.out_dir / "last.pth")
        if self.world.is_main:
            shutil.copyfile(self.resume_dir / "metrics.csv", self.out_dir / "metrics.csv")
            resolved = {"run": self.run_name, **self.settings}
            atomic_write_bytes(self.out_dir / "config.yaml", yaml.safe_dump(resolved, sort_keys=True).encode())
            shutil.rmtree(self.resume_dir)  # the run is complete: a later rerun starts from scratch
        log.info("pretraining %s finished: %d epochs, %d steps", self.run_name, self.epoch, self.global_step)

    def close(self) -> None:
        destroy_process_group(self.world)


def pretrain(
    run_name: str, run: Mapping[str, Any], shard_dirs: Sequence[Path], out_dir: Path, world: WorldInfo,
    resume: bool = False, device: str = "auto",
) -> int:  # fmt: skip
    """Train one run, `run` its validated `pretrain.<run>` block (parsed once, by the Trainer); returns the process
    exit code (0 done; EXIT_REQUEUE or EXIT_INTERRUPTED: checkpointed on a signal)."""
    trainer = Trainer(run_name, run, shard_dirs, out_dir, world, device)
    try:
        if resume:
            trainer.resume()
        return trainer.fit()
    finally:
        trainer.close()
