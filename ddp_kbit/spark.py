"""SparkSession from spark_conf/ and the TorchDistributor launch.

``local_mode=True`` runs the ranks as torchrun processes on the driver;
``--distributed`` runs them as a barrier stage on executors. A failed barrier
stage is not retried by Spark (spark.task.maxFailures=1); the driver restarts
from the newest checkpoint instead, up to --max-restarts.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from ddp_kbit.config import SparkConfig

log = logging.getLogger(__name__)
CONF_DIR = Path(__file__).resolve().parent.parent / "spark_conf"


def read_conf(path: Path) -> dict[str, str]:
    """spark-defaults.conf syntax: ``key  value`` per line, # comments."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            out[key] = value.strip()
    return out


def under_spark_submit() -> bool:
    """spark-submit starts the JVM first and hands Python its gateway."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def session_conf(cfg: SparkConfig) -> dict[str, str]:
    conf_dir = Path(cfg.conf_dir) if cfg.conf_dir else CONF_DIR
    # Under spark-submit its --master/--conf/properties file rule; only our explicit flags apply.
    conf = {} if under_spark_submit() else read_conf(conf_dir / "spark-defaults.conf")
    if cfg.gpu:
        conf.update(read_conf(conf_dir / "rapids.conf"))
        script = conf.get("spark.executor.resource.gpu.discoveryScript", "")
        if script and not os.path.isabs(script):
            for key in ("spark.executor.resource.gpu.discoveryScript", "spark.driver.resource.gpu.discoveryScript"):
                conf[key] = str(conf_dir.parent / script)
    if cfg.master:
        conf["spark.master"] = cfg.master
    elif "spark.master" in conf and conf["spark.master"].startswith("local"):
        conf["spark.master"] = f"local[{max(cfg.num_processes, 2)}]"  # a slot per barrier task
    for kv in cfg.conf:
        key, _, value = kv.partition("=")
        conf[key.strip()] = value.strip()
    return conf


def get_session(cfg: SparkConfig):
    from pyspark.sql import SparkSession

    # Executors' Python must be ours (same venv, same ddp_kbit).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    active = SparkSession.getActiveSession()
    if active is not None:  # under spark-submit the session's conf comes from there
        return active
    conf = session_conf(cfg)
    if conf.get("spark.master", "").startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # no guessing at interfaces for a local run
    builder = SparkSession.builder
    for k, v in conf.items():
        builder = builder.config(k, v)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def launch(cfg: SparkConfig, train_fn, spec) -> tuple[dict, dict]:
    """Run ``train_fn(spec)`` on ``num_processes`` ranks; returns rank 0's result
    and where it ran (master, application id, Spark version) for the report."""
    from pyspark.ml.torch.distributor import TorchDistributor

    spark = get_session(cfg)
    sc = spark.sparkContext
    where = {"master": sc.master, "app_id": sc.applicationId, "spark_version": spark.version,
             "mode": "barrier" if cfg.distributed else "local"}
    distributor = TorchDistributor(num_processes=cfg.num_processes, local_mode=not cfg.distributed,
                                   use_gpu=cfg.gpu)
    distributor.logger.setLevel(logging.WARNING)
    return distributor.run(train_fn, spec), where


def stop_session() -> None:
    from pyspark.sql import SparkSession

    spark = SparkSession.getActiveSession()
    if spark is not None:
        spark.stop()
