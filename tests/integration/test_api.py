"""KafkaDataset in loops that are not ours: a plain DDP loop under torchrun, and a
plain function run by TorchDistributor. Every offset of every epoch exactly once
across ranks, equal steps, and a run killed mid-epoch resumed from state_dict() on
another number of processes trains exactly the remainder."""
import json
import sys
import time

import pytest

from ddp_kbit.config import PublishConfig
from ddp_kbit.data.local_datasets import load_dataset
from ddp_kbit.data.publish import publish

from runs import torchrun

pytestmark = pytest.mark.slow
N = 3000

USER_LOOP = r'''
"""A user's own DDP loop: torchrun --nproc-per-node N user_loop.py SERVERS TOPIC OUT [KILL_EPOCH KILL_STEP] [STATE]"""
import json, os, signal, sys

import torch
import torch.distributed as dist
from torch import nn

from ddp_kbit import KafkaDataset

servers, topic, out = sys.argv[1:4]
kill = tuple(map(int, sys.argv[4:6])) if len(sys.argv) > 5 else None
state_file = sys.argv[6] if len(sys.argv) > 6 else None
dist.init_process_group("gloo")
rank = dist.get_rank()
ds = KafkaDataset(topic, bootstrap_servers=servers, batch_size=50, seed=1)
start_epoch = 0
if state_file and os.path.exists(state_file):
    state = torch.load(state_file, weights_only=True)
    ds.load_state_dict(state)
    start_epoch = state["epoch"]
model = nn.parallel.DistributedDataParallel(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
log = {"rank": rank, "epochs": {}}
for epoch in range(start_epoch, 2):
    ds.set_epoch(epoch)
    seen, steps = log["epochs"].setdefault(str(epoch), {"offsets": [], "steps": 0}), 0
    for batch in ds:
        x, y = batch.to("cpu")
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        ds.mark_used(batch)
        seen["offsets"] += batch.offsets.tolist()
        seen["steps"] += 1
        if kill and (epoch, seen["steps"]) == kill:
            if rank == 0:
                torch.save(ds.state_dict(), state_file)
            json.dump(log, open(f"{out}.rank{rank}.json", "w"))
            dist.barrier()
            if rank == 0:
                os.kill(os.getpid(), signal.SIGKILL)   # killed mid-epoch, right after a checkpoint
            dist.barrier()
json.dump(log, open(f"{out}.rank{rank}.json", "w"))
dist.destroy_process_group()
'''


@pytest.fixture(scope="module")
def topic(kcfg):
    ds = load_dataset("fashion-mnist", "train", limit=N)
    return publish(kcfg, PublishConfig(format="avro", topic=f"api.train.{time.time_ns()}", partitions=3), ds,
                   progress=False).manifest


def logged(out, procs):
    return all((out.parent / f"{out.name}.rank{r}.json").exists() for r in range(procs))


def logs_of(out, procs):
    return [json.loads((out.parent / f"{out.name}.rank{r}.json").read_text()) for r in range(procs)]


def all_offsets(m):
    return sorted((p, o) for p, (a, b) in m.partitions.items() for o in range(a, b))


def test_a_users_ddp_loop_under_torchrun_reads_every_offset_once_and_resumes_on_three(kcfg, topic, tmp_path):
    script = tmp_path / "user_loop.py"
    script.write_text(USER_LOOP)
    out = tmp_path / "full"
    torchrun(2, script, kcfg.bootstrap_servers, topic.topic, out, done=lambda _: logged(out, 2))
    logs = logs_of(out, 2)
    for epoch in ("0", "1"):
        got = sorted(tuple(o) for lg in logs for o in lg["epochs"][epoch]["offsets"])
        assert got == all_offsets(topic)                                     # exactly once across ranks
        assert len({lg["epochs"][epoch]["steps"] for lg in logs}) == 1      # equal steps
    assert logs[0]["epochs"]["0"]["offsets"][:50] != logs[0]["epochs"]["1"]["offsets"][:50]   # reshuffled

    state, killed = tmp_path / "state.pt", tmp_path / "killed"
    torchrun(2, script, kcfg.bootstrap_servers, topic.topic, killed, 1, 7, state, expect_rc=1)
    before = logs_of(killed, 2)
    resumed = tmp_path / "resumed"
    torchrun(3, script, kcfg.bootstrap_servers, topic.topic, resumed, -1, -1, state,   # on 3 processes
             done=lambda _: logged(resumed, 3))
    after = logs_of(resumed, 3)
    first = [tuple(o) for lg in before for o in lg["epochs"]["1"]["offsets"]]
    rest = [tuple(o) for lg in after for o in lg["epochs"]["1"]["offsets"]]
    assert len(first) == 2 * 7 * 50 and sorted(first + rest) == all_offsets(topic)   # exactly the remainder
    assert len({lg["epochs"]["1"]["steps"] for lg in after}) == 1


def user_fn(servers, topic):
    """A plain function of the user's, run by TorchDistributor: rank and world from torch.distributed."""
    import torch.distributed as dist

    from ddp_kbit import KafkaDataset

    dist.init_process_group("gloo")
    ds = KafkaDataset(topic, bootstrap_servers=servers, batch_size=64)
    offsets, steps = [], 0
    for batch in ds:
        offsets += batch.offsets.tolist()
        steps += 1
    every = [None] * dist.get_world_size()
    dist.all_gather_object(every, (offsets, steps, ds.rank, ds.world_size))
    dist.destroy_process_group()
    return every


def test_a_plain_function_run_by_torch_distributor(kcfg, spark, topic):
    from pyspark import cloudpickle
    from pyspark.ml.torch.distributor import TorchDistributor

    cloudpickle.register_pickle_by_value(sys.modules[__name__])   # the test module is not importable in the ranks
    every = TorchDistributor(num_processes=2, local_mode=True, use_gpu=False).run(user_fn, kcfg.bootstrap_servers,
                                                                                   topic.topic)
    assert sorted(tuple(o) for offs, *_ in every for o in offs) == all_offsets(topic)
    assert len({steps for _, steps, *_ in every}) == 1 and sorted(r for *_, r, _ in every) == [0, 1]
