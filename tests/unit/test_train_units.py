"""Small pure pieces of the training package."""
import os

import pytest
import torch

from ddp_kbit.config import MODELS
from ddp_kbit.data.plan import ConsumedRange
from ddp_kbit.train.dist import cpu_threads
from ddp_kbit.train.models import BUILDERS, channels_and_hw, check_model, make_model
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
    out = make_model(name, shape, classes)(torch.zeros(4, c, h, w))
    assert out.shape == (4, classes)


def test_epoch_record_sums_ranks():
    rec = epoch_record(0, EpochStats(30.0, 100, 1.0, 20.0), 2,
                       [ConsumedRange("t", 1, 0, 50, 50, 0), ConsumedRange("t", 0, 0, 50, 50, 1)],
                       {"val_loss": 0.5, "val_accuracy": 0.8})
    assert rec["epoch"] == 1 and rec["train_loss"] == 0.3 and rec["seconds"] == 10.0
    assert rec["samples_per_s"] == 10.0 and rec["data_wait_fraction"] == 0.05
    assert rec["consumed"] == [{"rank": 1, "topic": "t", "partition": 0, "start": 0, "end": 50, "count": 50},
                               {"rank": 0, "topic": "t", "partition": 1, "start": 0, "end": 50, "count": 50}]


def test_each_rank_takes_its_tasks_gpu_address():
    from ddp_kbit.train.dist import gpu_assignment

    # barrier mode: Spark gave the task address 5, exported as the only visible device
    assert gpu_assignment({"LOCAL_RANK": "0", "CUDA_VISIBLE_DEVICES": "5"}, 1) == \
        {"local_rank": 0, "device_index": 0, "visible": ["5"], "address": "5"}
    # local mode: two ranks on the driver share the driver's addresses, one each
    got = [gpu_assignment({"LOCAL_RANK": str(r), "CUDA_VISIBLE_DEVICES": "3,7"}, 2)["address"] for r in (0, 1)]
    assert got == ["3", "7"]


USER_MODEL = """
import torch

def build(shape, num_classes):
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(shape[0] * shape[1], num_classes))

def wrong_type(shape, num_classes):
    return "not a module"

def wrong_width(shape, num_classes):
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(7, num_classes))

def wrong_output(shape, num_classes):
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(shape[0] * shape[1], num_classes + 1))
"""


def test_model_specs_parse_load_and_check(tmp_path):
    from ddp_kbit.errors import ConfigError
    from ddp_kbit.train import usercode

    f = tmp_path / "my_model.py"
    f.write_text(USER_MODEL)
    ref = usercode.parse(f"{f}:build", "--model")
    assert ref.is_file and ref.source == USER_MODEL and ref.name == "build"
    assert check_model(ref, (28, 28), 10) == 28 * 28 * 10 + 10
    assert check_model(usercode.parse("ddp_kbit.train.models:mlp", "--model"), (28, 28), 10) > 0
    for name, match in [("wrong_type", "returned str, not a torch.nn.Module"),
                        ("wrong_width", "a forward pass on a batch of shape \\[2, 1, 28, 28\\]"),
                        ("wrong_output", "the output for a batch of 2 is \\[2, 11\\], expected \\[2, 10\\]"),
                        ("missing", "has no missing")]:
        with pytest.raises(ConfigError, match=f"--model {f}:{name}: .*{match}|--model {f}:{name} {match}"):
            check_model(usercode.parse(f"{f}:{name}", "--model"), (28, 28), 10)
    for spec, match in [("nocolon", "expected MODULE:FUNCTION or PATH.py:FUNCTION"),
                        ("./nowhere.py:build", "cannot read"), ("bad module!:x", "is not a module name")]:
        with pytest.raises(ConfigError, match=match):
            usercode.parse(spec, "--model")
    with pytest.raises(ConfigError, match="--model no_such_pkg_x:build: cannot import it \\(ModuleNotFoundError"):
        check_model(usercode.parse("no_such_pkg_x:build", "--model"), (28, 28), 10)
    with pytest.raises(ConfigError, match="unknown model 'resnet'; built-in: cnn3, cnn, mlp"):
        make_model("resnet", (28, 28), 10)


def test_transforms_run_in_order_with_a_seeded_generator_and_name_the_one_that_raises(tmp_path):
    from ddp_kbit.errors import ConfigError, UserError
    from ddp_kbit.train import usercode
    from ddp_kbit.train.transforms import Transforms, augment, batch_generator

    f = tmp_path / "tf.py"
    f.write_text("import torch\n"
                 "def invert(x, y, train):\n    return 1 - x, y\n"
                 "def noise(x, y, train, generator=None):\n"
                 "    return (x + torch.rand(x.shape, generator=generator) if train else x), y\n"
                 "def boom(x, y, train):\n    raise ValueError('bad batch')\n")
    refs = [usercode.parse(f"{f}:{n}", "--transform") for n in ("invert", "noise")]
    t = Transforms(refs)
    x, y = torch.zeros(3, 1, 4, 4), torch.arange(3)
    a, _ = t(x, y, True, batch_generator(torch.device("cpu"), 0, 1, 0, 5))
    b, _ = t(x, y, True, batch_generator(torch.device("cpu"), 0, 1, 0, 5))
    assert torch.equal(a, b) and a.min() >= 1                       # same (seed, epoch, rank, step): same draw
    assert torch.equal(t(x, y, False)[0], torch.ones(3, 1, 4, 4))   # evaluation: train=False
    with pytest.raises(UserError, match=f"transform {f}:boom raised ValueError: bad batch"):
        Transforms([usercode.parse(f"{f}:boom", "--transform")])(x, y, True)
    with pytest.raises(ConfigError, match=f"transform {f}:boom raised ValueError"):
        Transforms([usercode.parse(f"{f}:boom", "--transform")]).check(x, 10)
    img = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).reshape(2, 1, 6, 6)
    out, _ = augment(img, y[:2], True, torch.Generator().manual_seed(3))
    assert out.shape == img.shape and torch.equal(augment(img, y[:2], False)[0], img)


@pytest.mark.parametrize("schedule", ["onecycle", "cosine", "step", "none"])
def test_a_schedule_rebuilt_for_more_steps_after_a_resume_never_runs_past_its_end(schedule):
    """A restart on fewer ranks takes more steps than the checkpoint's plan: the
    schedule is rebuilt for the new length from the step it stopped at."""
    from ddp_kbit.config import TrainConfig
    from ddp_kbit.train.loop import build_optimizer, build_schedule

    cfg = TrainConfig(lr_schedule=schedule, lr=0.01)
    opt, sched = build_optimizer(cfg, [torch.nn.Parameter(torch.zeros(1))], 10)
    for _ in range(6):
        opt.step()
        sched.step()
    sched = build_schedule(cfg, opt, 16, done=6)   # the same run, now 16 steps long, 6 taken
    for _ in range(10):   # to the new end: torch's OneCycleLR raises when stepped past its total
        opt.step()
        sched.step()
        assert 0 <= opt.param_groups[0]["lr"] <= cfg.lr * 1.0001
