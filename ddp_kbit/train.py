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
from ddp_kbit.stream import KafkaStreamDataset, StreamConfig, merge_counted, to_device

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
        # processes share the host's cores; oversubscribed threads slow everyone down
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return rank, world, device


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
def stream_state(ds: KafkaStreamDataset, before: list, rank: int) -> list:
    """This rank's consumed ranges so far this epoch, as plain lists."""
    return before + [[rank, s.topic, s.partition, s.start, s.end, n] for s, n in ds.consumed]


def save_checkpoint(spec, model, opt, sched, scaler, epoch, global_step, consumed, history, bad) -> str:
    state = {"model": unwrap(model).state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
             "scaler": scaler.state_dict(), "epoch": epoch, "global_step": global_step, "consumed": consumed,
             "history": history, "bad": bad}
    return str(checkpoint.save(spec.checkpoint_dir, state))


def bad_total(parts: list[dict]) -> dict:
    total = {"count": 0, "seen": 0, "by_reason": {}}
    for b in parts:
        total["count"] += b["count"]
        total["seen"] += b["seen"]
        for k, v in b["by_reason"].items():
            total["by_reason"][k] = total["by_reason"].get(k, 0) + v
    return total


# ------------------------------------------------------------------ the rank's main
def train_fn(spec: RunSpec) -> dict | None:
    cfg = spec.train
    use_cuda = bool(spec.extra.get("gpu")) and torch.cuda.is_available()
    rank, world, device = init_distributed(use_cuda)
    logging.basicConfig(level=spec.extra.get("log_level", "INFO"),
                        format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s")
    logging.getLogger("ignite").setLevel(logging.WARNING)  # it logs every engine start/stop
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, spec.shape, spec.num_classes).to(device)
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if use_cuda else None)
    steps_per_epoch = len(plan_epoch(spec.train_slices, world, cfg.batch_size)[rank].batches)
    opt, sched = build_optimizer(cfg, model.parameters(), cfg.epochs * steps_per_epoch // cfg.grad_accum)
    amp = cfg.amp and use_cuda
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    stream_cfg = StreamConfig(format=cfg.format, layout=spec.layout, shape=spec.shape, dtype=spec.dtype,
                              prefetch=cfg.prefetch, max_bad_fraction=cfg.max_bad_fraction,
                              stall_timeout_s=cfg.stall_timeout_s, pin_memory=use_cuda)
    start_epoch, global_step, before, history, bad_before = 0, 0, [], [], {"count": 0, "seen": 0, "by_reason": {}}
    if spec.resume_from:
        st = checkpoint.load(spec.resume_from)
        unwrap(model).load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        scaler.load_state_dict(st["scaler"])
        start_epoch, global_step, before, history, bad_before = (st["epoch"], st["global_step"], st["consumed"],
                                                                  st["history"], st["bad"])
        if rank == 0:
            log.info("resumed from %s: epoch %d, step %d, %d ranges already used", spec.resume_from,
                     start_epoch + 1, global_step, len(before))
    last_ckpt, final_eval = None, None
    for epoch in range(start_epoch, cfg.epochs):
        used_before = [Slice(t, p, s, e) for _, t, p, s, e, _ in before]
        plan = plan_epoch(subtract(spec.train_slices, used_before), world, cfg.batch_size, seed=cfg.seed + epoch)[rank]
        ds = KafkaStreamDataset(spec.kafka, stream_cfg, plan)
        trainer = make_trainer(model, opt, sched, scaler, device, cfg, amp)

        @trainer.on(Events.STARTED)
        def _init(engine, ds=ds, gs=global_step):
            engine.state.stream, engine.state.pending = ds, []
            engine.state.global_step, engine.state.samples = gs, 0
            engine.state.loss_sum = torch.zeros((), device=device)

        if cfg.checkpoint_every:
            @trainer.on(Events.ITERATION_COMPLETED)
            def _step_ckpt(engine, ds=ds, epoch=epoch, before=before):
                if engine.state.pending or engine.state.global_step % cfg.checkpoint_every:
                    return
                consumed = sum(gather(stream_state(ds, [], rank)), before)
                bad = bad_total([bad_before, *gather(ds.bad.as_dict())])
                if rank == 0:
                    save_checkpoint(spec, model, opt, sched, scaler, epoch, engine.state.global_step,
                                    consumed, history, bad)
        if cfg.inject_failure_at_step and rank == 0:
            attach_fault_injection(trainer, cfg.inject_failure_at_step, Path(spec.checkpoint_dir) / ".injected")
        if cfg.progress and rank == 0:
            attach_progress(trainer, epoch, cfg.epochs)

        t0 = time.perf_counter()
        trainer.run(ds, max_epochs=1, epoch_length=len(ds)) if len(ds) else _init(trainer)
        seconds = time.perf_counter() - t0
        global_step = trainer.state.global_step
        loss_sum, samples, wait, secs = all_sum([float(trainer.state.loss_sum), trainer.state.samples,
                                                 ds.wait_seconds, seconds], device)
        consumed = sum(gather(stream_state(ds, [], rank)), before)
        bad_train = bad_total([bad_before, *gather(ds.bad.as_dict())])
        ev = evaluate(spec, model, device, rank, world, stream_cfg)
        record = {"epoch": epoch + 1, "train_loss": loss_sum / max(samples, 1), "val_loss": ev["val_loss"],
                  "val_accuracy": ev["val_accuracy"], "samples": int(samples), "seconds": secs / world,
                  "samples_per_s": samples / max(secs / world, 1e-9), "data_wait_fraction": wait / max(secs, 1e-9),
                  "consumed": [{"rank": r, "topic": t, "partition": p, "start": s, "end": e, "count": n}
                               for r, t, p, s, e, n in sorted(consumed, key=lambda c: (c[1], c[2], c[3]))]}
        history = history + [record]
        bad_before = bad_train
        before = []
        final_eval = ev
        if rank == 0:
            log.info("epoch %d: train_loss %.4f val_loss %.4f val_accuracy %.4f  %.0f samples/s  data wait %.1f%%",
                     epoch + 1, record["train_loss"], ev["val_loss"], ev["val_accuracy"], record["samples_per_s"],
                     100 * record["data_wait_fraction"])
            last_ckpt = save_checkpoint(spec, model, opt, sched, scaler, epoch + 1, global_step, [], history,
                                        bad_train)
    if final_eval is None:  # resumed from a finished run: just evaluate
        final_eval = evaluate(spec, model, device, rank, world, stream_cfg)
    if rank != 0:
        return None
    model_path = Path(spec.run_dir) / "model.pt"
    torch.save(unwrap(model).state_dict(), model_path)
    return {"epochs": history, "final": {"test_accuracy": final_eval["val_accuracy"],
                                         "test_loss": final_eval["val_loss"], "checkpoint": last_ckpt,
                                         "model": str(model_path)},
            "bad_records": bad_before, "world_size": world}
