"""A model and a transform in a file of your own, named on the command line as
``--model examples/my_model.py:small --transform examples/my_model.py:invert``: the
file's text travels with the run (executors need not have it) and into model.json,
so ``ddp-kbit evaluate`` needs nothing but the model's path."""
from torch import nn


def small(shape, num_classes):
    """(sample shape, class count) -> nn.Module"""
    return nn.Sequential(nn.Flatten(), nn.Linear(shape[0] * shape[1], 128), nn.ReLU(), nn.Linear(128, num_classes))


def invert(images, labels, train):
    """Whole float batches on the device; ``train`` is False in evaluation."""
    return 1.0 - images, labels
