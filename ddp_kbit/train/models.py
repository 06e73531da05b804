"""Models by name, sized from the manifest's sample shape and class count."""
from __future__ import annotations

import math

from torch import nn


def channels_and_hw(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(C, H, W) for a sample shape: (H, W) is greyscale, (H, W, C) is HWC colour."""
    if len(shape) == 2:
        return 1, shape[0], shape[1]
    if len(shape) == 3:
        return shape[2], shape[0], shape[1]
    raise ValueError(f"models take (H, W) or (H, W, C) samples, got shape {list(shape)}")


def cnn(shape: tuple[int, ...], num_classes: int, width: int = 32) -> nn.Module:
    """Two conv + pool blocks (with batch norm) and a small head: the classic
    Fashion-MNIST baseline family (0.88-0.92 test accuracy)."""
    c, h, w = channels_and_hw(shape)
    feat = 2 * width * (h // 4) * (w // 4)
    return nn.Sequential(
        nn.Conv2d(c, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.25), nn.Linear(feat, 128), nn.ReLU(inplace=True), nn.Dropout(0.25),
        nn.Linear(128, num_classes),
    )


def mlp(shape: tuple[int, ...], num_classes: int, hidden: int = 256) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), hidden), nn.ReLU(inplace=True),
                         nn.Dropout(0.2), nn.Linear(hidden, num_classes))


BUILDERS = {"cnn": cnn, "mlp": mlp}  # names as in ddp_kbit.config.MODELS


def build_model(name: str, shape: tuple[int, ...], num_classes: int) -> nn.Module:
    try:
        return BUILDERS[name](tuple(shape), num_classes)
    except KeyError:
        raise ValueError(f"unknown model {name!r}; allowed: {', '.join(BUILDERS)}") from None
