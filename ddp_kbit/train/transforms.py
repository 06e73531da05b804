"""Batch transforms, applied to whole batches on the device after the uint8 -> float
scaling (a GPU does the work): ``FUNCTION(images, labels, train) -> (images, labels)``
with ``images`` float N x C x H x W and ``labels`` int64 N. ``train`` is True in
training steps and False in evaluation. Given in order with ``--transform``
(repeatable); ``--augment`` puts the built-in :func:`augment` first.

Randomness: a function that takes a ``generator`` keyword gets a ``torch.Generator``
on the batch's device seeded from (seed, epoch, rank, step), so a run is reproducible
and a resumed run draws the same numbers for the same step of the same plan; one
that does not should draw from torch's global generator, which each rank seeds from
(seed, rank) at start.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ddp_kbit.data.plan import derive_seed
from ddp_kbit.errors import ConfigError, UserError, first_line
from ddp_kbit.train.models import spec_name
from ddp_kbit.train.usercode import CodeRef, load


def augment(images: torch.Tensor, labels: torch.Tensor, train: bool, generator: torch.Generator | None = None):
    """The built-in image augmentation (``--augment``): a random crop after 2-pixel
    zero padding (a shift of up to 2 pixels each way) and a horizontal flip with
    probability 1/2, per sample, drawn from ``generator``; nothing at evaluation."""
    if not train or images.dim() != 4 or not len(images):
        return images, labels
    n, _, h, w = images.shape
    pad = 2
    padded = F.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=images.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=images.device)
    flip = torch.rand(n, generator=generator, device=images.device) < 0.5
    rows = (dy[:, None] + torch.arange(h, device=images.device)[None, :])          # N x H
    cols = (dx[:, None] + torch.arange(w, device=images.device)[None, :])          # N x W
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    idx_r = rows[:, None, :, None].expand(n, images.shape[1], h, padded.shape[3])
    out = padded.gather(2, idx_r)
    idx_c = cols[:, None, None, :].expand(n, images.shape[1], h, w)
    return out.gather(3, idx_c), labels


@dataclass(frozen=True)
class _Step:
    spec: str
    fn: Callable
    wants_generator: bool


class Transforms:
    """The run's transforms in order; calling it applies every one."""

    def __init__(self, refs: Sequence[CodeRef] = (), builtin_augment: bool = False):
        steps = [_Step("--augment", augment, True)] if builtin_augment else []
        for ref in refs:
            fn = load(ref, "--transform") if isinstance(ref, CodeRef) else ref   # or a callable (Python API)
            steps.append(_Step(spec_name(ref), fn, _takes_generator(fn)))
        self.steps = tuple(steps)

    def __bool__(self) -> bool:
        return bool(self.steps)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, train: bool,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        for step in self.steps:
            try:
                out = step.fn(images, labels, train, generator=generator) if step.wants_generator \
                    else step.fn(images, labels, train)
                images, labels = out
            except UserError:
                raise
            except Exception as exc:
                raise UserError(f"transform {step.spec} raised {type(exc).__name__}: {first_line(exc, 300)}") \
                    from None
            if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor):
                raise UserError(f"transform {step.spec} must return (images, labels) tensors")
        return images, labels

    def check(self, example: torch.Tensor, num_classes: int) -> None:
        """One call on a zero batch per mode, before any rank starts: a transform that
        cannot even do that is one line naming it (exit 2)."""
        labels = torch.zeros(len(example), dtype=torch.int64)
        for train in (True, False):
            try:
                self(example.clone(), labels.clone(), train, torch.Generator().manual_seed(0))
            except UserError as exc:
                raise ConfigError(str(exc)) from None


def batch_generator(device: torch.device, seed: int, epoch: int, rank: int, step: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(derive_seed(seed, epoch, rank, step))


def _takes_generator(fn: Callable) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "generator" or p.kind is p.VAR_KEYWORD for p in params)
