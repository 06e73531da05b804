"""The GPU path, checked on machines without a GPU: a discovery script that reports
fake addresses makes Spark hand out GPU addresses; each rank takes its task's address
as its device (the mapping, with no CUDA call), and a rank that sees no CUDA device
stops the run with one line naming it (never a silent CPU run). Each runs in a
process of its own: GPU resources are fixed when a Spark session starts."""
import json
import os
import subprocess
import sys
import time

import pytest

from ddp_kbit.config import PublishConfig
from ddp_kbit.data.local_datasets import load_dataset
from ddp_kbit.data.publish import publish

pytestmark = pytest.mark.slow
PROBE = r'''
import json, os, sys
from pyspark.ml.torch.distributor import TorchDistributor
from ddp_kbit.config import SparkConfig
from ddp_kbit.launch import spark

script, out = sys.argv[1], sys.argv[2]
cfg = SparkConfig(gpu=True, distributed=True, num_processes=2, master="local-cluster[2,1,1024]",
                  conf=(f"spark.executor.resource.gpu.discoveryScript={script}",
                        f"spark.worker.resource.gpu.discoveryScript={script}"))
spark.get_session(cfg)

def fn(out):
    import json, os
    from ddp_kbit.train.dist import gpu_assignment
    got = gpu_assignment(os.environ, 0) | {"rank": int(os.environ["RANK"])}
    with open(f"{out}.rank{got['rank']}.json", "w") as fh:
        json.dump(got, fh)

TorchDistributor(num_processes=2, local_mode=False, use_gpu=True).run(fn, out)
spark.stop_session()
'''


@pytest.fixture
def fake_gpus(tmp_path):
    script = tmp_path / "fake-gpus.sh"
    script.write_text('#!/bin/bash\necho \'{"name": "gpu", "addresses": ["3", "5"]}\'\n')
    script.chmod(0o755)
    return script


def test_each_barrier_task_gets_a_gpu_address_and_its_rank_takes_it(fake_gpus, tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    r = subprocess.run([sys.executable, str(probe), str(fake_gpus), str(tmp_path / "rank")], capture_output=True,
                       text=True, timeout=300, env={**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"})
    assert r.returncode == 0, r.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank.rank{i}.json").read_text()) for i in (0, 1)]
    for got in ranks:
        assert len(got["visible"]) == 1 and got["visible"][0] in ("3", "5")   # the task's own address, only
        assert got["device_index"] == 0 and got["address"] == got["visible"][0]


def test_gpu_where_a_rank_sees_no_cuda_device_is_one_line_naming_it(kcfg, fake_gpus, tmp_path):
    m = publish(kcfg, PublishConfig(split="test", topic=f"gpu.{time.time_ns()}"),
                load_dataset("fashion-mnist", "test", limit=300), progress=False).manifest
    r = subprocess.run([sys.executable, "-m", "ddp_kbit.main", "--bootstrap-servers", kcfg.bootstrap_servers,
                        "--train-topic", m.topic, "--test-topic", m.topic, "--epochs", "1", "--gpu",
                        "--num-processes", "2", "--spark-conf",
                        f"spark.driver.resource.gpu.discoveryScript={fake_gpus}", "--no-progress",
                        "--run-dir", str(tmp_path), "--log-level", "WARNING"], capture_output=True, text=True,
                       timeout=300)
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 1 and "--gpu, but rank " in last and " sees no CUDA device (CUDA_VISIBLE_DEVICES=" in last
    assert "'3,5'" in last or "'5,3'" in last, last
    r = subprocess.run([sys.executable, "-m", "ddp_kbit.main", "--bootstrap-servers", kcfg.bootstrap_servers,
                        "--train-topic", m.topic, "--test-topic", m.topic, "--gpu", "--distributed"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--gpu --distributed needs a master whose workers schedule GPUs" in r.stderr
