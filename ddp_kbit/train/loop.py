"""Per-rank training: ``train_fn(spec)`` runs inside each TorchDistributor process.

The loop is ignite's: a step closure plus handlers (progress, step checkpoints,
user handlers). Each epoch streams this rank's planned batches from Kafka;
evaluation streams the test topic the same way. Rank 0 gathers what every rank
consumed and returns the report to the driver.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from ignite.metrics import Accuracy, Loss

from ddp_kbit import logs
from ddp_kbit.config import CheckpointConfig, DataConfig, KafkaConfig, TrainConfig
from ddp_kbit.data.manifest import Manifest
from ddp_kbit.data.partitions import Slice, plan_epoch, ranges_to_slices, subtract
from ddp_kbit.data.stream import KafkaStreamDataset, to_device
from ddp_kbit.train import checkpoint, dist
from ddp_kbit.train.handlers import HandlerContext, attach_every_steps, attach_progress, attach_user_handlers
from ddp_kbit.train.models import build_model
from ddp_kbit.train.records import EpochStats, RunProgress, epoch_record

log = logging.getLogger("ddp_kbit.train")


@dataclass(frozen=True)
class RunSpec:
    """Everything a rank needs, picklable: sent by the driver through TorchDistributor.
    Paths are absolute: a rank on an executor starts in another working directory."""

    kafka: KafkaConfig
    data: DataConfig
    train: TrainConfig
    checkpoint: CheckpointConfig     # ``dir`` resolved
    train_topic: Manifest
    test_topic: Manifest
    num_classes: int
    run_dir: str
    log_level: str = "INFO"
    progress: bool = True
    use_gpu: bool = False
    collective_timeout_s: float = 180.0
    resume_from: str | None = None
    dead_lettered: frozenset = frozenset()   # (topic, partition, offset) already in a DLQ

    @property
    def train_slices(self) -> list[Slice]:
        return ranges_to_slices(self.train_topic.topic, self.train_topic.partitions)

    @property
    def test_slices(self) -> list[Slice]:
        return ranges_to_slices(self.test_topic.topic, self.test_topic.partitions)

    def belongs_to(self) -> dict:
        """What a checkpoint of this run is for; a resume must match it exactly."""
        ranges = lambda m: {str(p): list(r) for p, r in sorted(m.partitions.items())}  # noqa: E731
        return {"train_topic": self.train_topic.topic, "train_ranges": ranges(self.train_topic),
                "test_topic": self.test_topic.topic, "model": self.train.model,
                "shape": list(self.train_topic.shape), "dtype": self.train_topic.dtype,
                "num_classes": self.num_classes}


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


# ------------------------------------------------------------------ engines
def make_trainer(model, opt, sched, scaler, device, grad_accum: int, amp: bool) -> Engine:
    """One optimizer step every ``grad_accum`` batches; the stream is told which
    batches went into a step only after that step, for exact checkpoints."""

    def step(engine: Engine, batch):
        st = engine.state
        model.train()
        x, y = to_device(batch, device)
        last = st.iteration % grad_accum == 0 or st.iteration == st.epoch_length
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync, torch.autocast(device.type, enabled=amp):
            out = model(x)
            # an all-bad batch still joins the gradient all-reduce, with zero loss
            loss = F.cross_entropy(out, y) if len(y) else out.sum() * 0.0
            scaler.scale(loss / grad_accum).backward()
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

    trainer = Engine(step)

    @trainer.on(Events.STARTED)
    def _init(engine):
        engine.state.pending, engine.state.samples = [], 0
        engine.state.loss_sum = torch.zeros((), device=device)

    return trainer


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


# ------------------------------------------------------------------ the rank's main
def train_fn(spec: RunSpec) -> dict:
    """Entry point of each rank. It leaves ``rank<N>.pid`` in the run directory
    while it runs, and on a Python error ``failure.rank<N>.txt`` with the reason:
    TorchDistributor's own error only says "see the logs", and a rank killed
    outright is known by the pid file it never removed."""
    rank = int(os.environ.get("RANK", 0))
    run_dir = Path(spec.run_dir)
    with contextlib.suppress(OSError):
        (run_dir / f"rank{rank}.pid").write_text(f"{os.getpid()} {socket.gethostname()}")
    # torchrun stops the other ranks with SIGTERM when one dies: say so, rather than vanish silently
    with contextlib.suppress(ValueError):  # not the main thread
        signal.signal(signal.SIGTERM, _terminated)
    try:
        result = _train(spec)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            (run_dir / f"failure.rank{rank}.txt").write_text(f"rank {rank}: {type(exc).__name__}: {exc}")
        raise
    finally:
        dist.teardown()
    (run_dir / f"rank{rank}.pid").unlink(missing_ok=True)
    return result


def placement(rank: int) -> dict:
    """Where this rank runs. On a Spark standalone worker an executor's working
    directory is <work dir>/<app id>/<executor id>; elsewhere it is the driver's."""
    cwd = Path.cwd()
    executor = cwd.name if cwd.parent.name.startswith("app-") else os.environ.get("SPARK_EXECUTOR_ID", "driver")
    return {"rank": rank, "host": socket.gethostname(), "pid": os.getpid(), "executor": executor,
            "started_at": time.time()}


class Terminated(RuntimeError):
    pass


def _terminated(signum, frame):
    raise Terminated("stopped by SIGTERM (a peer rank failed, or the run was cancelled)")


def _train(spec: RunSpec) -> dict:
    use_cuda = spec.use_gpu and torch.cuda.is_available()
    rank, world, device = dist.init_distributed(use_cuda, spec.collective_timeout_s)
    # forced: a Spark python worker may already have configured logging (lines would repeat)
    logs.configure(spec.log_level, f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s",
                   secrets=spec.kafka.secrets)
    log.info("rank %d/%d on %s: %d torch threads, cpus %s, OMP_NUM_THREADS=%s", rank, world, device,
             torch.get_num_threads(), sorted(os.sched_getaffinity(0)), os.environ.get("OMP_NUM_THREADS"))
    rt = RankTrainer(spec, rank, world, device, use_cuda)
    rt.placement = dist.gather(placement(rank))
    if spec.resume_from:
        rt.restore(spec.resume_from)
    for epoch in range(rt.run.epoch, spec.train.epochs):
        rt.train_epoch(epoch)
    return rt.result()


class RankTrainer:
    """One rank's model, optimizer and :class:`RunProgress`, with checkpoints of all of it."""

    def __init__(self, spec: RunSpec, rank: int, world: int, device: torch.device, use_cuda: bool):
        cfg = self.cfg = spec.train
        self.spec, self.rank, self.world, self.device = spec, rank, world, device
        self.pin_memory = use_cuda
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model, spec.train_topic.shape, spec.num_classes).to(device)
        if world > 1:
            model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if use_cuda else None)
        self.model = model
        steps = len(plan_epoch(spec.train_slices, world, cfg.batch_size)[rank].batches)
        self.opt, self.sched = build_optimizer(cfg, model.parameters(), cfg.epochs * steps // cfg.grad_accum)
        self.amp = cfg.amp and use_cuda
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp)
        self.run = RunProgress(belongs_to=spec.belongs_to())
        # "run" first: a checkpoint of another run is refused before any weights are touched
        self.to_save = {"run": self.run, "model": model, "optimizer": self.opt, "scheduler": self.sched,
                        "scaler": self.scaler}
        self.checkpointer = checkpoint.checkpointer(spec.checkpoint.dir, self.to_save, spec.checkpoint.keep)
        self.final_eval: dict | None = None
        self.forwarded = set(spec.dead_lettered)  # shared with the streams' dead-letter producers
        self.placement: list[dict] = []

    def restore(self, path: str) -> None:
        checkpoint.restore(path, self.to_save)
        self.forwarded |= {(t, p, o) for t, p, o, _ in self.run.bad_records}
        if self.rank == 0:
            log.info("resumed from %s: epoch %d, step %d, %d ranges already used", path, self.run.epoch + 1,
                     self.run.global_step, len(self.run.consumed))

    def stream(self, topic: Manifest, plan) -> KafkaStreamDataset:
        return KafkaStreamDataset(self.spec.kafka, self.spec.data, topic, plan, num_classes=self.spec.num_classes,
                                  pin_memory=self.pin_memory, forwarded=self.forwarded)

    def evaluate(self) -> dict:
        plan = plan_epoch(self.spec.test_slices, self.world, self.cfg.eval_batch_size)[self.rank]
        ds = self.stream(self.spec.test_topic, plan)
        ev = make_evaluator(self.model, self.device)
        ev.run(ds, max_epochs=1, epoch_length=len(ds))
        return {"val_loss": float(ev.state.metrics["loss"]), "val_accuracy": float(ev.state.metrics["accuracy"])}

    # ------------------------------------------------------------ epochs
    def train_epoch(self, epoch: int) -> None:
        cfg, spec, start = self.cfg, self.spec, dataclasses.replace(self.run)
        plan = plan_epoch(subtract(spec.train_slices, [c.slice for c in start.consumed]), self.world,
                          cfg.batch_size, seed=cfg.seed + epoch)[self.rank]
        ds = self.stream(spec.train_topic, plan)
        trainer = make_trainer(self.model, self.opt, self.sched, self.scaler, self.device, cfg.grad_accum, self.amp)
        t0 = time.perf_counter()

        @trainer.on(Events.STARTED)
        def _bind(engine):
            engine.state.stream, engine.state.global_step = ds, start.global_step

        def save_mid_epoch(engine: Engine) -> None:
            self.snapshot(start, engine, ds, t0)
            self.checkpointer(engine)

        if spec.checkpoint.every:
            attach_every_steps(trainer, spec.checkpoint.every, save_mid_epoch)
        if spec.progress and self.rank == 0:
            attach_progress(trainer, f"epoch {epoch + 1}/{cfg.epochs}")
        attach_user_handlers(trainer, cfg.handlers, HandlerContext(self.rank, self.world, epoch, spec.run_dir,
                                                                   spec.checkpoint.dir))
        if len(ds):
            trainer.run(ds, max_epochs=1, epoch_length=len(ds))
        else:  # a resume right at the end of an epoch: nothing left to train
            trainer.fire_event(Events.STARTED)
        stats = self.snapshot(start, trainer, ds, t0)
        self.final_eval = self.evaluate()
        # what every rank forwarded this epoch: no later epoch forwards it again
        self.forwarded = set().union(*dist.gather(self.forwarded))
        record = epoch_record(epoch, stats, self.world, self.run.consumed, self.final_eval)
        if self.rank == 0:
            log.info("epoch %d: train_loss %.4f val_loss %.4f val_accuracy %.4f  %.0f samples/s  data wait %.1f%%",
                     epoch + 1, record["train_loss"], record["val_loss"], record["val_accuracy"],
                     record["samples_per_s"], 100 * record["data_wait_fraction"])
        self.run.history = self.run.history + [record]
        self.run.epoch, self.run.consumed, self.run.partial = epoch + 1, [], EpochStats()
        self.checkpointer(trainer)

    def snapshot(self, start: RunProgress, engine: Engine, ds: KafkaStreamDataset, t0: float) -> EpochStats:
        """Bring ``self.run`` up to this point of the epoch, over all ranks
        (a collective: every rank calls it at the same step). Returns the epoch's stats."""
        now = EpochStats.from_list(dist.all_sum(
            [float(engine.state.loss_sum), engine.state.samples, ds.wait_seconds, time.perf_counter() - t0,
             len(ds.used_bad), ds.used_missing], self.device))
        consumed, bad = zip(*dist.gather((ds.consumed, ds.used_bad)))
        self.run.global_step = engine.state.global_step
        self.run.consumed = start.consumed + [c for part in consumed for c in part]
        self.run.bad_records = start.bad_records + [b for part in bad for b in part]
        self.run.partial = start.partial + now
        return self.run.partial

    def result(self) -> dict:
        """The run's result, the same on every rank: TorchDistributor's local mode
        keeps whichever rank's return value it reads last."""
        if self.final_eval is None:  # resumed from a finished run: just evaluate
            self.final_eval = self.evaluate()
        model_path = Path(self.spec.run_dir) / "model.pt"
        if self.rank == 0:
            torch.save(getattr(self.model, "module", self.model).state_dict(), model_path)
        last = self.checkpointer.last_checkpoint
        return {"epochs": self.run.history, "final": {"test_accuracy": self.final_eval["val_accuracy"],
                                                      "test_loss": self.final_eval["val_loss"],
                                                      "checkpoint": str(last) if last else None,
                                                      "model": str(model_path)},
                "bad_records": self.run.bad.to_dict(), "world_size": self.world, "ranks": self.placement}

