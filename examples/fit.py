"""Publish Fashion-MNIST to two topics, then train your own model with your own
transform through the whole pipeline (TorchDistributor, 2 processes), from Python.

    KAFKA=$(ddp-kbit broker | head -1) &   # or any Kafka
    KAFKA=127.0.0.1:PORT python examples/fit.py
"""
import os

from torch import nn

import ddp_kbit

servers = os.environ["KAFKA"]
ddp_kbit.publish("fashion-mnist", bootstrap_servers=servers, split="train", limit=6000, topic="api.train", force=True)
ddp_kbit.publish("fashion-mnist", bootstrap_servers=servers, split="test", limit=1000, topic="api.test", force=True)


def small(shape, num_classes):          # your model: (sample shape, class count) -> nn.Module
    return nn.Sequential(nn.Flatten(), nn.Linear(shape[0] * shape[1], 128), nn.ReLU(), nn.Linear(128, num_classes))


def invert(images, labels, train):      # your transform: whole float batches, on the device
    return 1.0 - images, labels


report = ddp_kbit.fit(bootstrap_servers=servers, train_topic="api.train", test_topic="api.test", epochs=2,
                      num_processes=2, model=small, transforms=[invert], run_dir="runs/api-example")
print(report["final"]["test_accuracy"], report["model"])
