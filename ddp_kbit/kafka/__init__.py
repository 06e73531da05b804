"""Kafka: one small interface over confluent-kafka and kafka-python, and the
embedded broker. Consumers only ever ``assign`` (never broker-side groups): the
embedded broker never hands out group assignments, and training owns its offsets."""
from ddp_kbit.kafka.client import (
    end_offsets,
    make_admin,
    make_consumer,
    make_producer,
    partition_bounds,
    read_all,
    read_topic,
    topics,
)
from ddp_kbit.kafka.protocol import DeliveryReport, Record

__all__ = ["DeliveryReport", "Record", "end_offsets", "make_admin", "make_consumer", "make_producer",
           "partition_bounds", "read_all", "read_topic", "topics"]
