"""The ignite engines of a rank: the training step (one optimizer step every
``grad_accum`` batches; the batch source learns which batches went into a step only
after it, for exact checkpoints) and the evaluator with ignite's metrics; the
optimizer and its learning-rate schedule."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from ignite.engine import Engine, EventEnum
from ignite.metrics import Accuracy, ConfusionMatrix, Loss, Precision, Recall

from ddp_kbit.config import TrainConfig
from ddp_kbit.data.stream import StreamBatch, to_device
from ddp_kbit.train.transforms import Transforms, batch_generator


class RunEvents(EventEnum):
    """Events of a rank's run beyond ignite's own (handlers attach to them)."""

    CHECKPOINT_SAVED = "checkpoint_saved"


# ------------------------------------------------------------------ optimizer
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


# ------------------------------------------------------------------ training
@dataclass
class Tally:
    """What one pass's trainer counts (read by checkpoints, metrics and the pass's stats)."""

    global_step: int
    samples: int = 0
    loss_sum: torch.Tensor = field(default_factory=lambda: torch.zeros(()))
    correct: torch.Tensor = field(default_factory=lambda: torch.zeros(()))   # before each step: test-then-train
    pending: list = field(default_factory=list)


class TrainEngine(Engine):
    """ignite's Engine with the pass's :class:`Tally` (handlers read ``engine.tally``)
    and the run's own events registered."""

    def __init__(self, step, tally: Tally):
        super().__init__(step)
        self.tally = tally
        self.register_events(*RunEvents)


@dataclass(frozen=True)
class StepRecipe:
    """How a training step runs (from the run's TrainConfig and device)."""

    grad_accum: int = 1
    amp: bool = False
    label_smoothing: float = 0.0
    seed: int = 0


def make_trainer(model, opt, sched, scaler, device, batches, recipe: StepRecipe, transforms: Transforms | None = None,
                 global_step: int = 0, key: int = 0, rank: int = 0) -> TrainEngine:
    """The training step over ``batches`` (``key``: the epoch or window, for the
    transforms' seeded generators)."""
    tally = Tally(global_step, loss_sum=torch.zeros((), device=device), correct=torch.zeros((), device=device))

    def step(engine: Engine, batch: StreamBatch):
        st = engine.state
        model.train()
        x, y = to_device(batch, device)
        if transforms:
            x, y = transforms(x, y, True, batch_generator(device, recipe.seed, key, rank, batch.step))
        last = st.iteration % recipe.grad_accum == 0 or st.iteration == st.epoch_length
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync, torch.autocast(device.type, enabled=recipe.amp):
            out = model(x)
            # an all-bad batch still joins the gradient all-reduce, with zero loss
            loss = F.cross_entropy(out, y, label_smoothing=recipe.label_smoothing) if len(y) else out.sum() * 0.0
            scaler.scale(loss / recipe.grad_accum).backward()
        tally.pending.append(batch)
        if last:
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            sched.step()
            for b in tally.pending:
                batches.mark_used(b)
            tally.pending.clear()
            tally.global_step += 1
        tally.loss_sum += loss.detach() * len(y)
        tally.correct += (out.detach().argmax(1) == y).sum() if len(y) else 0
        tally.samples += len(y)
        return loss

    return TrainEngine(step, tally)


# ------------------------------------------------------------------ evaluation
def make_evaluator(model, device, transforms: Transforms | None = None, num_classes: int | None = None) -> Engine:
    """An engine that scores batches: ignite's accuracy and loss; with ``num_classes``
    also its confusion matrix and per-class precision and recall. Each step's output
    is (logits, labels, batch), so a handler can use the predictions (a predictions topic)."""
    def step(engine, batch):
        model.eval()
        with torch.no_grad():
            x, y = to_device(batch, device)
            if transforms:
                x, y = transforms(x, y, False, batch_generator(device, 0, 0, 0, batch.step))
            return model(x), y, batch

    ev = Engine(step)
    pair = lambda out: out[:2]   # noqa: E731
    Accuracy(output_transform=pair, device=device).attach(ev, "accuracy")
    Loss(F.cross_entropy, output_transform=pair, device=device).attach(ev, "loss")
    if num_classes:
        ConfusionMatrix(num_classes, output_transform=pair, device=device).attach(ev, "confusion")
        Precision(output_transform=pair, device=device).attach(ev, "precision")
        Recall(output_transform=pair, device=device).attach(ev, "recall")
    return ev
