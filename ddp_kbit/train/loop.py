"""Per-rank training: ``train_fn(spec)`` runs inside each TorchDistributor process.

The loop is ignite's: a step closure plus handlers (progress, heartbeat, step
checkpoints, user handlers). One rank setup serves every caller: :class:`RankTrainer`
takes its batch source (a :class:`KafkaDataset` of the train topic, or batches from
memory for the experiment's ceiling) and runs the model, transforms, optimizer and
checkpoints the same way for both. Evaluation streams the test topic the same way.
Every rank returns the same result (the run's report part): TorchDistributor's local
mode keeps whichever rank's return value it reads last.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from ignite.engine import Engine
from ignite.metrics import Accuracy, Loss

from ddp_kbit import kafka, logs
from ddp_kbit.config import (
    CheckpointConfig,
    DataConfig,
    FollowConfig,
    KafkaConfig,
    MetricsConfig,
    SourceConfig,
    TrainConfig,
)
from ddp_kbit.data.kafka_dataset import KafkaDataset
from ddp_kbit.data.manifest import Manifest
from ddp_kbit.data.plan import Shuffle, Slice, plan_epoch, ranges_to_slices, subtract
from ddp_kbit.data.stream import StreamBatch, to_device
from ddp_kbit.errors import UserError
from ddp_kbit.files import write_json
from ddp_kbit.train import checkpoint, dist, rundir
from ddp_kbit.train.checkpoint import DiskFullError
from ddp_kbit.train.handlers import (
    HandlerContext,
    attach_every_steps,
    attach_heartbeat,
    attach_progress,
    attach_user_handlers,
)
from ddp_kbit.train.metrics import RankMetrics
from ddp_kbit.train.modelcard import card_path, digest, make_card
from ddp_kbit.train.models import make_model, parameter_count, spec_name
from ddp_kbit.train.records import EpochStats, RunProgress, epoch_record
from ddp_kbit.train.stopping import StopRequest
from ddp_kbit.train.transforms import Transforms, batch_generator
from ddp_kbit.train.usercode import CodeRef

log = logging.getLogger("ddp_kbit.train")


@dataclass(frozen=True)
class RunSpec:
    """Everything a rank needs, picklable: sent by the driver through TorchDistributor.
    Paths are absolute: a rank on an executor starts in another working directory.
    User code (model, transforms, handlers) travels as :class:`CodeRef`s, a file's
    text included."""

    kafka: KafkaConfig
    data: DataConfig
    train: TrainConfig
    checkpoint: CheckpointConfig     # ``dir`` resolved
    train_topic: Manifest
    test_topic: Manifest | None
    num_classes: int
    run_dir: str
    model: object = "cnn3"                 # a built-in name, a CodeRef, or a callable (Python API)
    transforms: tuple = ()                 # CodeRefs or callables
    handlers: tuple[CodeRef, ...] = ()
    source: SourceConfig = SourceConfig()    # registry credentials of foreign topics (never in a manifest)
    metrics: MetricsConfig = MetricsConfig()
    log_level: str = "INFO"
    progress: bool = True
    use_gpu: bool = False
    collective_timeout_s: float = 180.0
    resume_from: str | None = None
    dead_lettered: frozenset = frozenset()   # (topic, partition, offset) already in a DLQ
    follow: FollowConfig | None = None       # --follow: windows of new records instead of epochs
    follow_start: dict = field(default_factory=dict)   # partition -> first offset the run trains

    @property
    def model_spec(self) -> str:
        return spec_name(self.model)

    def card(self) -> dict:
        """What the trained model needs beside its weights (model.json, checkpoints)."""
        t = self.train_topic
        return make_card(self.model, self.transforms, shape=t.shape, dtype=t.dtype, num_classes=self.num_classes,
                         class_names=t.class_names, train_topic=t.topic, augment=self.train.augment)

    @property
    def train_slices(self) -> list[Slice]:
        return ranges_to_slices(self.train_topic.topic, self.train_topic.partitions)

    def belongs_to(self) -> dict:
        """What a checkpoint of this run is for; a resume must match it exactly (a
        followed topic grows: its start positions say which run it is)."""
        ranges = lambda m: {str(p): list(r) for p, r in sorted(m.partitions.items())}  # noqa: E731
        where = {"follow_start": {str(p): o for p, o in sorted(self.follow_start.items())}} if self.follow_start \
            else {"train_ranges": ranges(self.train_topic)}
        return {"train_topic": self.train_topic.topic, **where,
                "test_topic": self.test_topic.topic if self.test_topic else None, "model": self.model_spec,
                "shape": list(self.train_topic.shape), "dtype": self.train_topic.dtype,
                "num_classes": self.num_classes}


# ------------------------------------------------------------------ model / optimizer
def build_optimizer(cfg: TrainConfig, params, total_steps: int):
    if cfg.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    elif cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                              nesterov=cfg.momentum > 0)
    return opt, build_schedule(cfg, opt, total_steps)


def build_schedule(cfg: TrainConfig, opt, total_steps: int, done: int = 0):
    """The learning-rate schedule over ``total_steps`` optimizer steps, ``done`` of them
    already taken (a resume on another number of ranks has another step count: the
    schedule is rebuilt for it, so it never runs past its end)."""
    total, last = max(1, total_steps), done - 1
    if cfg.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total, last_epoch=last)
    if cfg.lr_schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total + 1, pct_start=0.25,
                                                   anneal_strategy="cos", last_epoch=last)
    if cfg.lr_schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, total // 3), gamma=0.1, last_epoch=last)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0, last_epoch=last)


# ------------------------------------------------------------------ engines
@dataclass
class Tally:
    """What one epoch's trainer counts (read by checkpoints and the epoch's stats)."""

    global_step: int
    samples: int = 0
    loss_sum: torch.Tensor = field(default_factory=lambda: torch.zeros(()))
    correct: torch.Tensor = field(default_factory=lambda: torch.zeros(()))   # before each step: test-then-train
    pending: list = field(default_factory=list)


def make_trainer(model, opt, sched, scaler, device, source, *, grad_accum: int = 1, amp: bool = False,
                 transforms: Transforms | None = None, label_smoothing: float = 0.0, global_step: int = 0,
                 seed: int = 0, epoch: int = 0, rank: int = 0) -> Engine:
    """One optimizer step every ``grad_accum`` batches; ``source.mark_used`` is told
    which batches went into a step only after that step, for exact checkpoints. The
    engine's ``tally`` holds its counts."""
    tally = Tally(global_step, loss_sum=torch.zeros((), device=device), correct=torch.zeros((), device=device))

    def step(engine: Engine, batch: StreamBatch):
        st = engine.state
        model.train()
        x, y = to_device(batch, device)
        if transforms:
            x, y = transforms(x, y, True, batch_generator(device, seed, epoch, rank, batch.step))
        last = st.iteration % grad_accum == 0 or st.iteration == st.epoch_length
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync, torch.autocast(device.type, enabled=amp):
            out = model(x)
            # an all-bad batch still joins the gradient all-reduce, with zero loss
            loss = F.cross_entropy(out, y, label_smoothing=label_smoothing) if len(y) else out.sum() * 0.0
            scaler.scale(loss / grad_accum).backward()
        tally.pending.append(batch)
        if last:
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            sched.step()
            for b in tally.pending:
                source.mark_used(b)
            tally.pending.clear()
            tally.global_step += 1
        tally.loss_sum += loss.detach() * len(y)
        tally.correct += (out.detach().argmax(1) == y).sum() if len(y) else 0
        tally.samples += len(y)
        return loss

    trainer = Engine(step)
    trainer.tally = tally
    return trainer


def make_evaluator(model, device, transforms: Transforms | None = None) -> Engine:
    def step(engine, batch):
        model.eval()
        with torch.no_grad():
            x, y = to_device(batch, device)
            if transforms:
                x, y = transforms(x, y, False, batch_generator(device, 0, 0, 0, batch.step))
            return model(x), y

    ev = Engine(step)
    Accuracy(device=device).attach(ev, "accuracy")
    Loss(F.cross_entropy, device=device).attach(ev, "loss")
    return ev


# ------------------------------------------------------------------ the rank's main
def train_fn(spec: RunSpec) -> dict:
    """Entry point of each rank; it leaves the files of :mod:`rundir` in the run directory."""
    rank = int(os.environ.get("RANK", 0))
    rundir.started(spec.run_dir, rank)
    stop = StopRequest(spec.checkpoint.dir).install()
    try:
        result = _train(spec, stop)
    except BaseException as exc:
        rundir.note_stalled_peers(spec.run_dir, rank, spec.collective_timeout_s)
        rundir.failed(spec.run_dir, rank, f"rank {rank}: {type(exc).__name__}: {exc}",   # (traceback: ranks.log)
                         final=isinstance(exc, DiskFullError))
        raise
    finally:
        dist.teardown()
    rundir.finished(spec.run_dir, rank)
    return result


def placement(rank: int) -> dict:
    """Where this rank runs. On a Spark standalone worker an executor's working
    directory is <work dir>/<app id>/<executor id>; elsewhere it is the driver's."""
    cwd = Path.cwd()
    executor = cwd.name if cwd.parent.name.startswith("app-") else os.environ.get("SPARK_EXECUTOR_ID", "driver")
    return {"rank": rank, "host": socket.gethostname(), "pid": os.getpid(), "executor": executor,
            "started_at": time.time()}


def _train(spec: RunSpec, stop: StopRequest) -> dict:
    rank = int(os.environ.get("RANK", 0))
    if spec.use_gpu and not torch.cuda.is_available():
        raise UserError(f"--gpu, but rank {rank} on {socket.gethostname()} sees no CUDA device "
                        f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}); it would train on the "
                        "CPU: check the GPU scheduling (spark_conf/gpu.conf, the discovery script) or leave --gpu out")
    rank, world, device = dist.init_distributed(spec.use_gpu, spec.collective_timeout_s)
    # forced: a Spark python worker may already have configured logging (lines would repeat)
    logs.configure(spec.log_level, f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s",
                   secrets=spec.kafka.secrets + spec.source.secrets)
    # ignite logs every exception it re-raises; the driver's one line says it already
    logging.getLogger("ignite.engine.engine.Engine").setLevel(logging.CRITICAL)
    log.info("rank %d/%d on %s: %d torch threads, cpus %s, OMP_NUM_THREADS=%s", rank, world, device,
             torch.get_num_threads(), sorted(os.sched_getaffinity(0)), os.environ.get("OMP_NUM_THREADS"))
    rt = RankTrainer(spec, rank, world, device, stop=stop)
    rt.placement = dist.gather(placement(rank))
    if spec.resume_from:
        rt.restore(spec.resume_from)
    try:
        if spec.follow is not None:
            from ddp_kbit.train.follow import Follower

            return Follower(rt).run()
        for epoch in range(rt.run.epoch, spec.train.epochs):
            if rt.stop.check(device):   # asked between epochs: the last epoch's checkpoint holds it all
                break
            rt.train_epoch(epoch)
        return rt.result()
    finally:
        if rt.metrics is not None:
            rt.metrics.close()


class MemoryBatches:
    """A batch source from in-memory tensors: the same batches (and the same
    trainer) as the Kafka stream, without Kafka: the ceiling of the experiment mode."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch: int):
        self.x, self.y, self.batch = images, labels, batch
        self.consumed, self.used_bad, self.used_absent, self.wait_seconds = [], [], [], 0.0

    def __len__(self) -> int:
        return (len(self.y) + self.batch - 1) // self.batch

    def __iter__(self):
        for k, i in enumerate(range(0, len(self.y), self.batch)):
            yield StreamBatch(self.x[i:i + self.batch], self.y[i:i + self.batch], step=k)

    def resume(self, epoch: int, used: list) -> None:
        pass

    def mark_used(self, batch) -> None:  # nothing to track: memory has no offsets
        pass


class RankTrainer:
    """One rank's model, optimizer and :class:`RunProgress`, with checkpoints of all of it.
    ``source``: the train batches (default: the train topic as a :class:`KafkaDataset`)."""

    def __init__(self, spec: RunSpec, rank: int, world: int, device: torch.device, source=None,
                 stop: StopRequest | None = None):
        cfg = self.cfg = spec.train
        self.spec, self.rank, self.world, self.device = spec, rank, world, device
        self.stop = stop or StopRequest(spec.checkpoint.dir)
        self.stopped: dict | None = None   # where a graceful stop left the run
        use_cuda = device.type == "cuda"
        torch.manual_seed(cfg.seed)   # the same initial weights everywhere (DDP broadcasts rank 0's anyway)
        model = make_model(spec.model, spec.train_topic.shape, spec.num_classes).to(device)
        self.parameters = parameter_count(model)
        torch.manual_seed(cfg.seed * 1_000_003 + rank)   # dropout, and transforms without a generator
        if world > 1:
            model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if use_cuda else None)
        self.model = model
        self.transforms = Transforms(spec.transforms, builtin_augment=cfg.augment)
        shuffle = Shuffle.of(spec.data)
        if spec.follow is None:
            self.steps_per_epoch = plan_epoch(spec.train_slices, world, cfg.batch_size, cfg.seed, 0,
                                              shuffle)[rank].num_batches
            self.total_steps = cfg.epochs * self.steps_per_epoch // cfg.grad_accum
            self.opt, self.sched = build_optimizer(cfg, model.parameters(), self.total_steps)
        else:   # an unbounded run has no total step count: a constant learning rate
            self.opt, self.sched = build_optimizer(dataclasses.replace(cfg, lr_schedule="none"), model.parameters(), 1)
        self.amp = cfg.amp and use_cuda
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp)
        self.run = RunProgress(belongs_to=spec.belongs_to(), card=spec.card())
        # "run" first: a checkpoint of another run is refused before any weights are touched
        self.to_save = {"run": self.run, "model": model, "optimizer": self.opt, "scheduler": self.sched,
                        "scaler": self.scaler}
        self.checkpointer = checkpoint.checkpointer(spec.checkpoint.dir, self.to_save, spec.checkpoint.keep)
        self.final_eval: dict | None = None
        self.forwarded = set(spec.dead_lettered)  # shared with the streams' dead-letter producers
        self.metrics = RankMetrics(spec.metrics.port, rank, spec.checkpoint.dir) if spec.metrics.port else None
        self._committer, self.committed, self.lag = None, {}, {}
        self.placement: list[dict] = []
        self.source = source if source is not None or spec.follow is not None else \
            self._kafka(spec.train_topic, cfg.batch_size, spec.data)
        self.test = self._kafka(spec.test_topic, cfg.eval_batch_size, dataclasses.replace(spec.data, shuffle="none")) \
            if spec.test_topic is not None else None

    def _kafka(self, topic: Manifest, batch: int, data: DataConfig, slices=None) -> KafkaDataset:
        return KafkaDataset(topic, kafka=self.spec.kafka, data=data, batch_size=batch, rank=self.rank,
                            world_size=self.world, seed=self.cfg.seed, num_classes=self.spec.num_classes,
                            pin_memory=self.device.type == "cuda", forwarded=self.forwarded, source=self.spec.source,
                            slices=slices)

    def restore(self, path: str) -> None:
        checkpoint.restore(path, self.to_save)
        self.forwarded |= {(t, p, o) for t, p, o, _ in self.run.bad_records}
        if self.spec.follow is None:
            self.fit_schedule()
        if self.rank == 0:
            log.info("resumed from %s: epoch %d, step %d, %d ranges already used", path, self.run.epoch + 1,
                     self.run.global_step, len(self.run.consumed))

    def fit_schedule(self) -> None:
        """After a resume: the steps left at this world size may differ from the
        checkpoint's plan (fewer ranks take more steps); re-plan the schedule's length."""
        cfg, run = self.cfg, self.run
        rest = subtract(self.spec.train_slices, [c.slice for c in run.consumed])
        left = plan_epoch(rest, self.world, cfg.batch_size, cfg.seed, run.epoch, Shuffle.of(self.spec.data))[
            self.rank].num_batches if run.epoch < cfg.epochs and rest else 0
        total = run.global_step + (left + max(0, cfg.epochs - run.epoch - 1) * self.steps_per_epoch) // cfg.grad_accum
        if total != self.total_steps:
            self.total_steps = total
            self.sched = self.to_save["scheduler"] = build_schedule(cfg, self.opt, total, run.global_step)

    def evaluate(self) -> dict:
        if self.test is None:
            return {"val_loss": float("nan"), "val_accuracy": float("nan")}
        self.test.resume(0, [])   # the whole test topic, every time
        ev = make_evaluator(self.model, self.device, self.transforms)
        if len(self.test):
            ev.run(self.test, max_epochs=1, epoch_length=len(self.test))
            if self.metrics is not None:
                self.metrics.accuracy.labels(str(self.rank)).set(float(ev.state.metrics["accuracy"]))
            return {"val_loss": float(ev.state.metrics["loss"]), "val_accuracy": float(ev.state.metrics["accuracy"])}
        return {"val_loss": float("nan"), "val_accuracy": float("nan")}

    # ------------------------------------------------------------ epochs
    def train_epoch(self, epoch: int, evaluate: bool = True) -> None:
        start = dataclasses.replace(self.run)
        self.source.resume(epoch, [c.slice for c in start.consumed])
        trainer, stats = self.run_pass(epoch, self.source, start, f"epoch {epoch + 1}/{self.cfg.epochs}")
        if self.stop.agreed:   # mid-epoch: the checkpoint holds what went into steps; --resume does the rest
            self.note_stop("epoch", epoch, trainer, start)
            self.checkpoint(trainer)
            return
        self.final_eval = self.evaluate() if evaluate else {"val_loss": float("nan"), "val_accuracy": float("nan")}
        self.share_forwarded()
        record = epoch_record(epoch, stats, self.world, self.run.consumed, self.final_eval)
        if self.rank == 0:
            log.info("epoch %d: train_loss %.4f val_loss %.4f val_accuracy %.4f  %.0f samples/s  data wait %.1f%%",
                     epoch + 1, record.train_loss, record.val_loss, record.val_accuracy, record.samples_per_s,
                     100 * record.data_wait_fraction)
        self.run.history = self.run.history + [record.to_dict()]   # plain data: it goes into checkpoints
        self.run.epoch, self.run.consumed, self.run.partial = epoch + 1, [], EpochStats()
        self.checkpoint(trainer)

    def run_pass(self, key: int, ds, start: RunProgress, desc: str, handlers=()) -> tuple[Engine, EpochStats]:
        """Train on every batch of ``ds`` (an epoch, or a window of ``--follow``) with the
        step checkpoints, progress, heartbeat and user handlers; ``key`` seeds the
        transforms. Returns the trainer and the pass's stats over all ranks."""
        cfg, spec = self.cfg, self.spec
        trainer = make_trainer(self.model, self.opt, self.sched, self.scaler, self.device, ds,
                               grad_accum=cfg.grad_accum, amp=self.amp, transforms=self.transforms,
                               label_smoothing=cfg.label_smoothing, global_step=start.global_step, seed=cfg.seed,
                               epoch=key, rank=self.rank)
        t0 = time.perf_counter()

        def save_mid_pass(engine: Engine) -> None:
            self.snapshot(start, engine, ds, t0)
            self.checkpoint(engine)

        if spec.checkpoint.every:
            attach_every_steps(trainer, spec.checkpoint.every, save_mid_pass)
        if spec.progress and self.rank == 0:
            attach_progress(trainer, desc)
        attach_heartbeat(trainer, lambda: rundir.beat(spec.run_dir, self.rank))
        self.stop.attach(trainer, self.device)
        if self.metrics is not None:
            self.metrics.attach(trainer, ds, spec.train_topic.topic, key, spec.follow is not None)
        for attach in handlers:
            attach(trainer)
        attach_user_handlers(trainer, spec.handlers, HandlerContext(self.rank, self.world, key, spec.run_dir,
                                                                    spec.checkpoint.dir))
        if len(ds):   # empty: a resume right at the end of a pass, nothing left to train
            trainer.run(ds, max_epochs=1, epoch_length=len(ds))
        return trainer, self.snapshot(start, trainer, ds, t0)

    def note_stop(self, unit: str, index: int, trainer: Engine, start: RunProgress) -> None:
        """Where the graceful stop left the run: the pass and the optimizer steps taken in it."""
        self.stopped = {"by": self.stop.agreed, unit: index + 1, "step": trainer.tally.global_step - start.global_step,
                        "global_step": trainer.tally.global_step}
        if self.rank == 0:
            log.warning("stopping (%s) after step %d of %s %d, with a checkpoint", self.stop.agreed,
                        self.stopped["step"], unit, index + 1)

    def checkpoint(self, engine: Engine) -> None:
        """An atomic checkpoint, then (rank 0) the trained offsets committed for lag tools
        and the lag gauge; the commit is never read back: checkpoints are the truth."""
        self.checkpointer(engine)
        if self.metrics is not None and self.rank == 0:   # one series per partition for the world
            self.metrics.set_lag(self.spec.train_topic.topic, self.lag)
        group = self.spec.metrics.group_for(self.spec.train_topic.topic)
        if self.rank == 0 and group and self.committed:
            try:
                if self._committer is None:
                    self._committer = kafka.make_consumer(self.spec.kafka, group_id=group)
                self._committer.commit({(self.spec.train_topic.topic, p): o for p, o in self.committed.items()})
            except UserError as exc:   # lag monitoring is not worth a training run
                log.warning("could not commit trained offsets to group %s: %s", group, exc)

    def pass_offsets(self, slices, consumed) -> None:
        """Per partition of this pass: committed = its first offset + records passed in
        steps (HW - committed is what is left to train), and the lag gauge's count."""
        trained: dict[int, int] = {}
        for c in consumed:
            trained[c.partition] = trained.get(c.partition, 0) + c.end - c.start
        first, total = {}, {}
        for s in slices:
            first[s.partition] = min(first.get(s.partition, s.start), s.start)
            total[s.partition] = total.get(s.partition, 0) + len(s)
        self.committed = {p: first[p] + min(trained.get(p, 0), total[p]) for p in first}
        self.lag = {p: total[p] - min(trained.get(p, 0), total[p]) for p in first}

    def share_forwarded(self) -> None:
        """What every rank dead-lettered: no later pass forwards it again."""
        self.forwarded |= set().union(*dist.gather(self.forwarded))

    def snapshot(self, start: RunProgress, engine: Engine, ds, t0: float) -> EpochStats:
        """Bring ``self.run`` up to this point of the epoch, over all ranks
        (a collective: every rank calls it at the same step). Returns the epoch's stats."""
        tally = engine.tally
        now = EpochStats.from_list(dist.all_sum(
            [float(tally.loss_sum), tally.samples, ds.wait_seconds, time.perf_counter() - t0,
             len(ds.used_bad), len(ds.used_absent)], self.device))
        consumed, bad = zip(*dist.gather((ds.consumed, ds.used_bad)))
        self.run.global_step = tally.global_step
        self.run.consumed = start.consumed + [c for part in consumed for c in part]
        if hasattr(ds, "new_slices"):
            self.pass_offsets(ds.new_slices, self.run.consumed)
        self.run.bad_records = start.bad_records + [b for part in bad for b in part]
        self.run.partial = start.partial + now
        return self.run.partial

    def result(self) -> dict:
        """The run's result, the same on every rank."""
        if self.final_eval is None and self.stop.agreed:   # a stop is quick: no evaluation
            self.final_eval = self.run.history[-1] if self.run.history else \
                {"val_loss": float("nan"), "val_accuracy": float("nan")}
        if self.final_eval is None:  # resumed from a finished run: just evaluate
            self.final_eval = self.evaluate()
        model_path = Path(self.spec.run_dir) / "model.pt"
        if self.rank == 0:
            state = getattr(self.model, "module", self.model).state_dict()
            torch.save(state, model_path)
            write_json(card_path(model_path), {**self.run.card, "digest": digest(state, self.run.card)})
        last = self.checkpointer.last_checkpoint
        return {"epochs": self.run.history, "final": {"test_accuracy": self.final_eval["val_accuracy"],
                                                      "test_loss": self.final_eval["val_loss"],
                                                      "checkpoint": str(last) if last else None,
                                                      "model": str(model_path)},
                "model": {"spec": self.spec.model_spec, "parameters": self.parameters},
                "bad_records": self.run.bad.to_dict(), "world_size": self.world, "ranks": self.placement,
                "stopped": self.stopped_at(last)}

    def stopped_at(self, last) -> dict | None:
        """A graceful stop's place (stopped between epochs: after the last one finished)."""
        if not self.stop.agreed:
            return None
        unit = "window" if self.spec.follow is not None else "epoch"
        where = self.stopped or {"by": self.stop.agreed, unit: self.run.epoch, "step": None,
                                 "global_step": self.run.global_step}
        return {**where, "checkpoint": str(last) if last else None}
