"""Per-rank training: ``train_fn(spec)`` runs inside each TorchDistributor process.

The loop is ignite's: a step closure (:mod:`engines`) plus handlers (progress,
heartbeat, step checkpoints, graceful stop, offset commits and lag after each
checkpoint, metrics, user handlers). One rank setup (:mod:`rank`) serves every
caller: :class:`RankTrainer` takes its :class:`~ddp_kbit.train.batches.BatchSource`
(a :class:`KafkaDataset` of the train topic, or batches from memory for the
experiment's ceiling) and runs the model, transforms, optimizer and checkpoints the
same way for both. Evaluation streams the test topic the same way. Every rank
returns the same result (the run's report part): TorchDistributor's local mode keeps
whichever rank's return value it reads last.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path

import torch
from ignite.engine import Engine

from ddp_kbit import procs
from ddp_kbit.config import DataConfig
from ddp_kbit.data.kafka_dataset import KafkaDataset
from ddp_kbit.data.manifest import Manifest
from ddp_kbit.data.plan import SEED_RANK, Shuffle, Slice, derive_seed, plan_epoch, subtract
from ddp_kbit.files import write_json
from ddp_kbit.train import checkpoint, dist, rundir
from ddp_kbit.train.batches import BatchSource
from ddp_kbit.train.checkpoint import DiskFullError
from ddp_kbit.train.engines import (
    RunEvents,
    StepRecipe,
    TrainEngine,
    build_optimizer,
    build_schedule,
    make_evaluator,
    make_trainer,
)
from ddp_kbit.train.handlers import (
    HandlerContext,
    OffsetCommitter,
    attach_every_steps,
    attach_heartbeat,
    attach_progress,
    attach_user_handlers,
)
from ddp_kbit.train.metrics import RankMetrics
from ddp_kbit.train.modelcard import card_path, digest
from ddp_kbit.train.models import make_model, parameter_count
from ddp_kbit.train.rank import placement, start_rank
from ddp_kbit.train.records import EpochStats, RunProgress, TrainedOffsets, epoch_record
from ddp_kbit.train.spec import RunSpec
from ddp_kbit.train.stopping import StopRequest
from ddp_kbit.train.transforms import Transforms

log = logging.getLogger("ddp_kbit.train")
NO_EVAL = {"val_loss": float("nan"), "val_accuracy": float("nan")}


# ------------------------------------------------------------------ the rank's main
def train_fn(spec: RunSpec) -> dict:
    """Entry point of each rank; it leaves the files of :mod:`rundir` in the run directory."""
    rank = int(os.environ.get("RANK", 0))
    if "TORCHELASTIC_RUN_ID" in os.environ:   # torchrun started this rank: end with it
        procs.exit_with_parent()
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


def _train(spec: RunSpec, stop: StopRequest) -> dict:
    rank, world, device = start_rank(spec.use_gpu, spec.collective_timeout_s, spec.log_level,
                                     spec.kafka.secrets + spec.source.secrets)
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


class RankTrainer:
    """One rank's model, optimizer and :class:`RunProgress`, with checkpoints of all of
    it. ``batches``: the train batches (default: the train topic as a
    :class:`KafkaDataset`; None with ``--follow``, whose windows bring their own)."""

    def __init__(self, spec: RunSpec, rank: int, world: int, device: torch.device,
                 batches: BatchSource | None = None, stop: StopRequest | None = None):
        cfg = self.cfg = spec.train
        self.spec, self.rank, self.world, self.device = spec, rank, world, device
        self.stop = stop or StopRequest(spec.checkpoint.dir)
        self.stopped: dict | None = None   # where a graceful stop left the run
        self.model, self.parameters = self._model()
        self.transforms = Transforms(spec.transforms, builtin_augment=cfg.augment)
        self.recipe = StepRecipe(cfg.grad_accum, cfg.amp and device.type == "cuda", cfg.label_smoothing, cfg.seed)
        self.forwarded = set(spec.dead_lettered)  # shared with the streams' dead-letter producers
        self.batches = batches if batches is not None or spec.follow is not None else \
            self.dataset(spec.train_topic, cfg.batch_size, spec.data)
        self.test = self.dataset(spec.test_topic, cfg.eval_batch_size, dataclasses.replace(spec.data, shuffle="none")) \
            if spec.test_topic is not None else None
        self._optimizer()
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.recipe.amp)
        self.run = RunProgress(belongs_to=spec.belongs_to(), card=spec.card())
        # "run" first: a checkpoint of another run is refused before any weights are touched
        self.to_save = {"run": self.run, "model": self.model, "optimizer": self.opt, "scheduler": self.sched,
                        "scaler": self.scaler}
        self.checkpointer = checkpoint.checkpointer(spec.checkpoint.dir, self.to_save, spec.checkpoint.keep)
        self.final_eval: dict | None = None
        self.metrics = RankMetrics(spec.metrics.port, rank, spec.checkpoint.dir) if spec.metrics.port else None
        group = spec.metrics.group_for(spec.train_topic.topic)
        self.committer = OffsetCommitter(spec.kafka, group, spec.train_topic.topic) if rank == 0 and group else None
        self.offsets = TrainedOffsets()   # committed for lag tools, and the lag gauge, after each checkpoint
        self.placement: list[dict] = []

    def _model(self) -> tuple[torch.nn.Module, int]:
        cfg, spec = self.cfg, self.spec
        torch.manual_seed(cfg.seed)   # the same initial weights everywhere (DDP broadcasts rank 0's anyway)
        model = make_model(spec.model, spec.train_topic.shape, spec.num_classes).to(self.device)
        count = parameter_count(model)
        torch.manual_seed(derive_seed(cfg.seed, self.rank, SEED_RANK))   # dropout, transforms without a generator
        if self.world > 1:
            cuda = self.device.type == "cuda"
            model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[self.device.index] if cuda else None)
        return model, count

    def _optimizer(self) -> None:
        cfg = self.cfg
        if self.spec.follow is not None:   # an unbounded run has no total step count: a constant learning rate
            self.opt, self.sched = build_optimizer(dataclasses.replace(cfg, lr_schedule="none"),
                                                   self.model.parameters(), 1)
            return
        self.steps_per_epoch = self._steps(self.spec.train_slices, 0)
        self.total_steps = cfg.epochs * self.steps_per_epoch // cfg.grad_accum
        self.opt, self.sched = build_optimizer(cfg, self.model.parameters(), self.total_steps)

    def _steps(self, slices: list[Slice], epoch: int) -> int:
        """This rank's batches in an epoch of ``slices`` (the same plan its dataset reads)."""
        cfg = self.cfg
        return plan_epoch(slices, self.world, cfg.batch_size, cfg.seed, epoch, Shuffle.of(self.spec.data))[
            self.rank].num_batches if slices else 0

    def dataset(self, topic: Manifest, batch: int, data: DataConfig, slices=None, new_from=None) -> KafkaDataset:
        """A topic (or some of its offsets: a window) as this rank reads it."""
        return KafkaDataset(topic, kafka=self.spec.kafka, data=data, batch_size=batch, rank=self.rank,
                            world_size=self.world, seed=self.cfg.seed, num_classes=self.spec.num_classes,
                            pin_memory=self.device.type == "cuda", forwarded=self.forwarded, source=self.spec.source,
                            slices=slices, new_from=new_from)

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
        left = self._steps(rest, run.epoch) if run.epoch < cfg.epochs else 0
        total = run.global_step + (left + max(0, cfg.epochs - run.epoch - 1) * self.steps_per_epoch) // cfg.grad_accum
        if total != self.total_steps:
            self.total_steps = total
            self.sched = self.to_save["scheduler"] = build_schedule(cfg, self.opt, total, run.global_step)

    def evaluate(self) -> dict:
        """Loss and accuracy on the whole test topic (over all ranks); kept as the run's final."""
        self.final_eval = dict(NO_EVAL)
        if self.test is None:
            return self.final_eval
        self.test.resume(0, [])   # the whole test topic, every time
        if len(self.test):
            ev = make_evaluator(self.model, self.device, self.transforms)
            ev.run(self.test, max_epochs=1, epoch_length=len(self.test))
            if self.metrics is not None:
                self.metrics.accuracy.labels(str(self.rank)).set(float(ev.state.metrics["accuracy"]))
            self.final_eval = {"val_loss": float(ev.state.metrics["loss"]),
                               "val_accuracy": float(ev.state.metrics["accuracy"])}
        return self.final_eval

    # ------------------------------------------------------------ epochs
    def train_epoch(self, epoch: int, evaluate: bool = True) -> None:
        start = dataclasses.replace(self.run)
        self.batches.resume(epoch, [c.slice for c in start.consumed])
        trainer, stats = self.run_pass(epoch, self.batches, start, f"epoch {epoch + 1}/{self.cfg.epochs}")
        if self.stop.agreed:   # mid-epoch: the checkpoint holds what went into steps; --resume does the rest
            self.note_stop("epoch", epoch, trainer, start)
            self.checkpoint(trainer)
            return
        ev = self.evaluate() if evaluate else dict(NO_EVAL)
        self.share_forwarded()
        record = epoch_record(epoch, stats, self.world, self.run.consumed, ev)
        if self.rank == 0:
            log.info("epoch %d: train_loss %.4f val_loss %.4f val_accuracy %.4f  %.0f samples/s  data wait %.1f%%",
                     epoch + 1, record.train_loss, record.val_loss, record.val_accuracy, record.samples_per_s,
                     100 * record.data_wait_fraction)
        self.close_pass(record.to_dict())
        self.checkpoint(trainer)

    def close_pass(self, record: dict) -> None:
        """A finished pass (epoch or window) joins the history (plain data: it goes into
        checkpoints); the next one starts with nothing consumed."""
        self.run.history = self.run.history + [record]
        self.run.epoch, self.run.consumed, self.run.partial = len(self.run.history), [], EpochStats()

    def run_pass(self, key: int, ds, start: RunProgress, desc: str) -> tuple[TrainEngine, EpochStats]:
        """Train on every batch of ``ds`` (an epoch, or a window of ``--follow``) with the
        run's handlers; ``key`` seeds the transforms. Returns the trainer and the pass's
        stats over all ranks."""
        trainer = make_trainer(self.model, self.opt, self.sched, self.scaler, self.device, ds, self.recipe,
                               self.transforms, start.global_step, key, self.rank)
        t0 = time.perf_counter()
        self._attach(trainer, ds, key, desc, lambda engine: self.snapshot(start, engine, ds, t0))
        if len(ds):   # empty: a resume right at the end of a pass, nothing left to train
            trainer.run(ds, max_epochs=1, epoch_length=len(ds))
        return trainer, self.snapshot(start, trainer, ds, t0)

    def _attach(self, trainer: TrainEngine, ds, key: int, desc: str, snapshot) -> None:
        spec = self.spec
        if spec.checkpoint.every:
            def save_mid_pass(engine: Engine) -> None:
                snapshot(engine)
                self.checkpoint(engine)

            attach_every_steps(trainer, spec.checkpoint.every, save_mid_pass)
        if spec.progress and self.rank == 0:
            attach_progress(trainer, desc)
        attach_heartbeat(trainer, lambda: rundir.beat(spec.run_dir, self.rank))
        self.stop.attach(trainer, self.device)
        if self.metrics is not None:
            self.metrics.attach(trainer, ds, spec.train_topic.topic, key, spec.follow is not None)
            if self.rank == 0:   # one lag series per partition for the world
                self.metrics.attach_lag(trainer, spec.train_topic.topic, lambda: self.offsets.lag)
        if self.committer is not None:
            self.committer.attach(trainer, lambda: self.offsets.committed)
        attach_user_handlers(trainer, spec.handlers, HandlerContext(self.rank, self.world, key, spec.run_dir,
                                                                    spec.checkpoint.dir))

    def checkpoint(self, engine: TrainEngine) -> None:
        """An atomic checkpoint; then what follows one (offset commits, the lag gauge)."""
        self.checkpointer(engine)
        engine.fire_event(RunEvents.CHECKPOINT_SAVED)

    def note_stop(self, unit: str, index: int, trainer: TrainEngine, start: RunProgress) -> None:
        """Where the graceful stop left the run: the pass and the optimizer steps taken in it."""
        self.stopped = {"by": self.stop.agreed, unit: index + 1, "step": trainer.tally.global_step - start.global_step,
                        "global_step": trainer.tally.global_step}
        if self.rank == 0:
            log.warning("stopping (%s) after step %d of %s %d, with a checkpoint", self.stop.agreed,
                        self.stopped["step"], unit, index + 1)

    def share_forwarded(self) -> None:
        """What every rank dead-lettered: no later pass forwards it again."""
        self.forwarded |= set().union(*dist.gather(self.forwarded))

    def snapshot(self, start: RunProgress, engine: TrainEngine, ds, t0: float) -> EpochStats:
        """Bring ``self.run`` up to this point of the pass, over all ranks (a collective:
        every rank calls it at the same step). Returns the pass's stats."""
        tally = engine.tally
        now = EpochStats.from_list(dist.all_sum(
            [float(tally.loss_sum), tally.samples, ds.wait_seconds, time.perf_counter() - t0,
             len(ds.used_bad), len(ds.used_absent)], self.device))
        consumed, bad = zip(*dist.gather((ds.consumed, ds.used_bad)))
        self.run.global_step = tally.global_step
        self.run.consumed = start.consumed + [c for part in consumed for c in part]
        if isinstance(ds, KafkaDataset):
            self.offsets = TrainedOffsets.of(ds.new_slices, self.run.consumed, behind=self.offsets.behind)
        self.run.bad_records = start.bad_records + [b for part in bad for b in part]
        self.run.partial = start.partial + now
        return self.run.partial

    # ------------------------------------------------------------ the result
    def result(self) -> dict:
        """The run's result, the same on every rank (plain data: it comes back through
        TorchDistributor; the driver makes the typed report of it)."""
        if self.final_eval is None and self.stop.agreed:   # a stop is quick: no evaluation
            self.final_eval = self.run.history[-1] if self.run.history else dict(NO_EVAL)
        if self.final_eval is None:  # resumed from a finished run: just evaluate
            self.evaluate()
        model_path = Path(self.spec.run_dir) / "model.pt"
        if self.rank == 0:
            self.save_model(model_path)
        last = self.checkpointer.last_checkpoint
        return {"epochs": self.run.history, "final": {"test_accuracy": self.final_eval["val_accuracy"],
                                                      "test_loss": self.final_eval["val_loss"],
                                                      "checkpoint": str(last) if last else None,
                                                      "model": str(model_path)},
                "model": {"spec": self.spec.model_spec, "parameters": self.parameters},
                "bad_records": self.run.bad.to_dict(), "world_size": self.world, "ranks": self.placement,
                "stopped": self.stopped_at(last)}

    def save_model(self, path: Path) -> None:
        """The weights as a plain state_dict (``weights_only`` loads it) and, beside them,
        the card that says how to use them (model.json), written atomically."""
        state = getattr(self.model, "module", self.model).state_dict()
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)
        write_json(card_path(path), {**self.run.card, "digest": digest(state, self.run.card)})

    def stopped_at(self, last) -> dict | None:
        """A graceful stop's place (stopped between passes: after the last one finished)."""
        if not self.stop.agreed:
            return None
        unit = "window" if self.spec.follow is not None else "epoch"
        where = self.stopped or {"by": self.stop.agreed, unit: self.run.epoch, "step": None,
                                 "global_step": self.run.global_step}
        return {**where, "checkpoint": str(last) if last else None}
