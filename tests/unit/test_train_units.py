"""Small pure pieces of the training package."""
import os

import pytest
import torch

from ddp_kbit.config import MODELS
from ddp_kbit.data.partitions import ConsumedRange
from ddp_kbit.train.dist import cpu_threads
from ddp_kbit.train.models import BUILDERS, build_model, channels_and_hw
from ddp_kbit.train.records import EpochStats, epoch_record


@pytest.mark.parametrize("env,world,want", [
    ({"OMP_NUM_THREADS": "3"}, 2, 3),                    # Spark's per-task share wins
    ({"LOCAL_WORLD_SIZE": "2"}, 2, None),                 # host CPUs split among local ranks
    ({"OMP_NUM_THREADS": "0", "LOCAL_WORLD_SIZE": "1"}, 4, None),
])
def test_cpu_threads(monkeypatch, env, world, want):
    for k in ("OMP_NUM_THREADS", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    cpus = len(os.sched_getaffinity(0))
    local = int(env.get("LOCAL_WORLD_SIZE", world))
    assert cpu_threads(world) == (want if want is not None else max(1, cpus // local))


def test_config_names_every_model():
    assert tuple(BUILDERS) == MODELS


@pytest.mark.parametrize("shape,classes", [((28, 28), 10), ((32, 32, 3), 43), ((8, 12), 2)])
@pytest.mark.parametrize("name", MODELS)
def test_models_fit_the_manifest_shape(name, shape, classes):
    c, h, w = channels_and_hw(shape)
    out = build_model(name, shape, classes)(torch.zeros(4, c, h, w))
    assert out.shape == (4, classes)


def test_epoch_record_sums_ranks():
    rec = epoch_record(0, EpochStats(30.0, 100, 1.0, 20.0), 2,
                       [ConsumedRange("t", 1, 0, 50, 50, 0), ConsumedRange("t", 0, 0, 50, 50, 1)],
                       {"val_loss": 0.5, "val_accuracy": 0.8})
    assert rec["epoch"] == 1 and rec["train_loss"] == 0.3 and rec["seconds"] == 10.0
    assert rec["samples_per_s"] == 10.0 and rec["data_wait_fraction"] == 0.05
    assert rec["consumed"] == [{"rank": 1, "topic": "t", "partition": 0, "start": 0, "end": 50, "count": 50},
                               {"rank": 0, "topic": "t", "partition": 1, "start": 0, "end": 50, "count": 50}]
