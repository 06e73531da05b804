"""Per-rank training: ``train_fn(spec)`` runs inside each TorchDistributor process.

The loop is ignite's: a step closure plus handlers (progress bar, step
checkpoints, fault injection). Each epoch streams this rank's planned batches
from Kafka; evaluation streams the test topic the same way. Rank 0 gathers what
every rank consumed and returns the report to the driver.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from ignite.engine import Engine, Events
from ignite.metrics import Accuracy, Loss

from ddp_kbit import checkpoint
from ddp_kbit.config import KafkaConfig, TrainConfig
from ddp_kbit.models import build_model
from ddp_kbit.partitions import Slice, plan_epoch, subtract
from ddp_kbit.stream import KafkaStreamDataset, StreamConfig, to_device

log = logging.getLogger("ddp_kbit.train")


@dataclass(frozen=True)
class RunSpec:
    """Everything a rank needs, picklable: sent by the driver through TorchDistributor."""

    kafka: KafkaConfig
    train: TrainConfig
    train_slices: tuple[Slice, ...]
    test_slices: tuple[Slice, ...]
    shape: tuple[int, ...]
    dtype: str
    num_classes: int
    layout: str
    checkpoint_dir: str
    run_dir: str
    resume_from: str | None = None
    extra: dict = field(default_factory=dict)


# ------------------------------------------------------------------ distributed helpers
def init_distributed(use_cuda: bool) -> tuple[int, int, torch.device]:
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if use_cuda:
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(cpu_threads(world))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return rank, world, device


def cpu_threads(world: int) -> int:
    """Threads for this rank's CPU ops. Spark hands each task its CPU share as
    OMP_NUM_THREADS (spark.task.cpus); without it, split this host's CPUs among
    the local ranks. In barrier mode LOCAL_WORLD_SIZE is 1 per task even when
    tasks share a host, so it alone would oversubscribe (measured: half speed)."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return int(os.environ["OMP_NUM_THREADS"])
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus // int(os.environ.get("LOCAL_WORLD_SIZE", world)))


def gather(obj) -> list:
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_sum(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


# ------------------------------------------------------------------ model / optimizer
def build_optimizer(cfg: TrainConfig, params, total_steps: int):
    if cfg.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.lr_schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total_steps))
    elif cfg.lr_schedule == "step":
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, total_steps // 3), gamma=0.1)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    return opt, sched


def unwrap(model):
    return model.module if hasattr(model, "module") else model


# ------------------------------------------------------------------ engines
def make_trainer(model, opt, sched, scaler, device, cfg: TrainConfig, amp: bool) -> Engine:
    """One optimizer step every ``grad_accum`` batches; the stream is told which
    batches went into a step only after that step, for exact checkpoints."""

    def step(engine: Engine, batch):
        st = engine.state
        model.train()
        x, y = to_device(batch, device)
        last = st.iteration % cfg.grad_accum == 0 or st.iteration == st.epoch_length
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync, torch.autocast(device.type, enabled=amp):
            out = model(x)
            # an all-bad batch still joins the gradient all-reduce, with zero loss
            loss = F.cross_entropy(out, y) if len(y) else out.sum() * 0.0
            scaler.scale(loss / cfg.grad_accum).backward()
        st.pending.append(batch)
        if last:
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            sched.step()
            for b in st.pending:
                st.stream.mark_used(b)
            st.pending.clear()
            st.global_step += 1
        st.loss_sum += loss.detach() * len(y)
        st.samples += len(y)
        return loss

    return Engine(step)


def make_evaluator(model, device) -> Engine:
    def step(engine, batch):
        model.eval()
        with torch.no_grad():
            x, y = to_device(batch, device)
            return model(x), y

    ev = Engine(step)
    Accuracy(device=device).attach(ev, "accuracy")
    Loss(F.cross_entropy, device=device).attach(ev, "loss")
    return ev


def evaluate(spec: RunSpec, model, device, rank: int, world: int, stream_cfg: StreamConfig) -> dict:
    plan = plan_epoch(spec.test_slices, world, spec.train.eval_batch_size)[rank]
    ds = KafkaStreamDataset(spec.kafka, stream_cfg, plan)
    ev = make_evaluator(model, device)
    ev.run(ds, max_epochs=1, epoch_length=len(ds))
    return {"val_loss": float(ev.state.metrics["loss"]), "val_accuracy": float(ev.state.metrics["accuracy"]),
            "bad": ds.bad.as_dict()}


# ------------------------------------------------------------------ handlers
def attach_progress(trainer: Engine, epoch: int, total_epochs: int) -> None:
    from ignite.handlers import ProgressBar

    bar = ProgressBar(persist=True, desc=f"epoch {epoch + 1}/{total_epochs}")
    bar.attach(trainer, output_transform=lambda loss: {"loss": float(loss)}
               if trainer.state.iteration % 10 == 0 else {})


def attach_fault_injection(trainer: Engine, at_step: int, marker: Path) -> None:
    """Crash rank 0 once at a global step, to exercise restarts and resume."""

    @trainer.on(Events.ITERATION_COMPLETED)
    def _fail(engine):
        if engine.state.global_step == at_step and not marker.exists():
            marker.write_text(str(at_step))
            raise RuntimeError(f"injected failure at step {at_step} (--inject-failure-at-step)")


# ------------------------------------------------------------------ checkpoint state
def stream_state(ds: KafkaStreamDataset, rank: int) -> list:
    """This rank's consumed ranges so far this epoch, as plain lists."""
    return [[rank, s.topic, s.partition, s.start, s.end, n] for s, n in ds.consumed]


def bad_total(parts: list[dict]) -> dict:
    total = {"count": 0, "seen": 0, "by_reason": {}}
    for b in parts:
        total["count"] += b["count"]
        total["seen"] += b["seen"]
        for k, v in b["by_reason"].items():
            total["by_reason"][k] = total["by_reason"].get(k, 0) + v
    return total


# ------------------------------------------------------------------ the rank's main
def failure_path(run_dir: str, rank: int) -> Path:
    return Path(run_dir) / f"failure.rank{rank}.txt"


def train_fn(spec: RunSpec) -> dict | None:
    """Entry point of each rank. A failure's reason is left in the run directory:
    TorchDistributor's own error only says "see the logs"."""
    try:
        return _train(spec)
    except BaseException as exc:
        rank = int(os.environ.get("RANK", 0))
        with contextlib.suppress(OSError):
            failure_path(spec.run_dir, rank).write_text(f"rank {rank}: {type(exc).__name__}: {exc}")
        raise


def _train(spec: RunSpec) -> dict | None:
    use_cuda = bool(spec.extra.get("gpu")) and torch.cuda.is_available()
    rank, world, device = init_distributed(use_cuda)
    # force: a Spark python worker may already have configured logging (lines would repeat)
    logging.basicConfig(level=spec.extra.get("log_level", "INFO"), force=True,
                        format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s")
    logging.getLogger("ignite").setLevel(logging.WARNING)  # it logs every engine start/stop
    log.info("rank %d/%d on %s: %d torch threads, cpus %s, OMP_NUM_THREADS=%s", rank, world, device,
             torch.get_num_threads(), sorted(os.sched_getaffinity(0)), os.environ.get("OMP_NUM_THREADS"))
    rt = RankTrainer(spec, rank, world, device, use_cuda)
    if spec.resume_from:
        rt.restore(spec.resume_from)
    for epoch in range(rt.epoch, spec.train.epochs):
        rt.train_epoch(epoch)
    return rt.result()


ZERO_STATS = [0.0, 0.0, 0.0, 0.0]  # world sums of: loss x samples, samples, data-wait seconds, seconds


class RankTrainer:
    """One rank's model, optimizer and run state (epoch, step, what this epoch has
    already used, history), with checkpointing of all of it."""

    def __init__(self, spec: RunSpec, rank: int, world: int, device: torch.device, use_cuda: bool):
        cfg = self.cfg = spec.train
        self.spec, self.rank, self.world, self.device = spec, rank, world, device
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model, spec.shape, spec.num_classes).to(device)
        if world > 1:
            model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if use_cuda else None)
        self.model = model
        steps = len(plan_epoch(spec.train_slices, world, cfg.batch_size)[rank].batches)
        self.opt, self.sched = build_optimizer(cfg, model.parameters(), cfg.epochs * steps // cfg.grad_accum)
        self.amp = cfg.amp and use_cuda
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp)
        self.stream_cfg = StreamConfig(format=cfg.format, layout=spec.layout, shape=spec.shape, dtype=spec.dtype,
                                       prefetch=cfg.prefetch, max_bad_fraction=cfg.max_bad_fraction,
                                       stall_timeout_s=cfg.stall_timeout_s, pin_memory=use_cuda)
        self.epoch, self.global_step, self.before, self.history = 0, 0, [], []
        self.bad = {"count": 0, "seen": 0, "by_reason": {}}
        self.partial = list(ZERO_STATS)  # stats of this epoch's part before a resume
        self.last_ckpt, self.final_eval = None, None

    # ------------------------------------------------------------ checkpoints
    def restore(self, path: str) -> None:
        st = checkpoint.load(path)
        unwrap(self.model).load_state_dict(st["model"])
        self.opt.load_state_dict(st["optimizer"])
        self.sched.load_state_dict(st["scheduler"])
        self.scaler.load_state_dict(st["scaler"])
        self.epoch, self.global_step, self.before = st["epoch"], st["global_step"], st["consumed"]
        self.history, self.bad, self.partial = st["history"], st["bad"], st["partial"]
        if self.rank == 0:
            log.info("resumed from %s: epoch %d, step %d, %d ranges already used", path, self.epoch + 1,
                     self.global_step, len(self.before))

    def save(self, epoch: int, consumed: list, bad: dict, partial: list) -> str | None:
        """Collective callers, rank 0 writes."""
        if self.rank != 0:
            return None
        state = {"model": unwrap(self.model).state_dict(), "optimizer": self.opt.state_dict(),
                 "scheduler": self.sched.state_dict(), "scaler": self.scaler.state_dict(), "epoch": epoch,
                 "global_step": self.global_step, "consumed": consumed, "history": self.history, "bad": bad,
                 "partial": partial}
        return str(checkpoint.save(self.spec.checkpoint_dir, state))

    def so_far(self, engine: Engine, ds: KafkaStreamDataset, t0: float) -> tuple[list, dict, list]:
        """(consumed ranges, bad records, stats) of this epoch so far, over all ranks."""
        consumed = sum(gather(stream_state(ds, self.rank)), self.before)
        bad = bad_total([self.bad, *gather(ds.bad.as_dict())])
        now = all_sum([float(engine.state.loss_sum), engine.state.samples, ds.wait_seconds,
                       time.perf_counter() - t0], self.device)
        return consumed, bad, [a + b for a, b in zip(self.partial, now)]

    # ------------------------------------------------------------ epochs
    def train_epoch(self, epoch: int) -> None:
        cfg, spec = self.cfg, self.spec
        used_before = [Slice(t, p, s, e) for _, t, p, s, e, _ in self.before]
        plan = plan_epoch(subtract(spec.train_slices, used_before), self.world, cfg.batch_size,
                          seed=cfg.seed + epoch)[self.rank]
        ds = KafkaStreamDataset(spec.kafka, self.stream_cfg, plan)
        trainer = make_trainer(self.model, self.opt, self.sched, self.scaler, self.device, cfg, self.amp)
        t0 = time.perf_counter()

        @trainer.on(Events.STARTED)
        def _init(engine):
            engine.state.stream, engine.state.pending = ds, []
            engine.state.global_step, engine.state.samples = self.global_step, 0
            engine.state.loss_sum = torch.zeros((), device=self.device)

        @trainer.on(Events.ITERATION_COMPLETED)
        def _step_checkpoint(engine):
            if cfg.checkpoint_every and not engine.state.pending and engine.state.global_step % cfg.checkpoint_every == 0:
                self.global_step = engine.state.global_step
                self.save(epoch, *self.so_far(engine, ds, t0))

        if cfg.inject_failure_at_step and self.rank == 0:
            attach_fault_injection(trainer, cfg.inject_failure_at_step, Path(spec.checkpoint_dir) / ".injected")
        if cfg.progress and self.rank == 0:
            attach_progress(trainer, epoch, cfg.epochs)
        trainer.run(ds, max_epochs=1, epoch_length=len(ds)) if len(ds) else _init(trainer)
        self.global_step = trainer.state.global_step
        consumed, self.bad, stats = self.so_far(trainer, ds, t0)
        self.final_eval = evaluate(spec, self.model, self.device, self.rank, self.world, self.stream_cfg)
        self.history = self.history + [epoch_record(epoch, stats, self.world, consumed, self.final_eval)]
        self.before, self.partial = [], list(ZERO_STATS)
        if self.rank == 0:
            r = self.history[-1]
            log.info("epoch %d: train_loss %.4f val_loss %.4f val_accuracy %.4f  %.0f samples/s  data wait %.1f%%",
                     epoch + 1, r["train_loss"], r["val_loss"], r["val_accuracy"], r["samples_per_s"],
                     100 * r["data_wait_fraction"])
        self.last_ckpt = self.save(epoch + 1, [], self.bad, self.partial)

    def result(self) -> dict | None:
        if self.final_eval is None:  # resumed from a finished run: just evaluate
            self.final_eval = evaluate(self.spec, self.model, self.device, self.rank, self.world, self.stream_cfg)
        if self.rank != 0:
            return None
        model_path = Path(self.spec.run_dir) / "model.pt"
        torch.save(unwrap(self.model).state_dict(), model_path)
        return {"epochs": self.history, "final": {"test_accuracy": self.final_eval["val_accuracy"],
                                                  "test_loss": self.final_eval["val_loss"],
                                                  "checkpoint": self.last_ckpt, "model": str(model_path)},
                "bad_records": self.bad, "world_size": self.world}


def epoch_record(epoch: int, stats: list, world: int, consumed: list, ev: dict) -> dict:
    loss_sum, samples, wait, secs = stats
    wall = secs / world  # ranks run side by side: seconds summed over ranks / ranks = wall time
    return {"epoch": epoch + 1, "train_loss": loss_sum / max(samples, 1), "val_loss": ev["val_loss"],
            "val_accuracy": ev["val_accuracy"], "samples": int(samples), "seconds": wall,
            "samples_per_s": samples / max(wall, 1e-9), "data_wait_fraction": wait / max(secs, 1e-9),
            "consumed": [{"rank": r, "topic": t, "partition": p, "start": s, "end": e, "count": n}
                         for r, t, p, s, e, n in sorted(consumed, key=lambda c: (c[1], c[2], c[3]))]}
