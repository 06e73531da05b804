"""ddp_kbit: train PyTorch DDP workers, launched by Spark, straight from Kafka topics.

    from ddp_kbit import KafkaDataset, fit, publish

:class:`KafkaDataset` drops into any torch.distributed loop; :func:`fit` is the
whole ``--mode train`` path; :func:`publish` writes a dataset to a topic with its
manifest. Imported lazily, so ``import ddp_kbit.wire`` (or ``--help``) does not
load torch or Spark.
"""
from __future__ import annotations

__all__ = ["KafkaDataset", "fit", "publish"]
__version__ = "0.3.0"


def __getattr__(name: str):
    if name in __all__:
        from ddp_kbit import api

        return getattr(api, name)
    raise AttributeError(f"module 'ddp_kbit' has no attribute {name!r}")
