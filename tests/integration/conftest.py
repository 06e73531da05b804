"""Integration fixtures: a real embedded broker (tansu) on a free port."""
import itertools

import pytest

from ddp_kbit.config import KafkaConfig
from ddp_kbit.kafka.broker import EmbeddedBroker

_names = itertools.count()


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    with EmbeddedBroker(tmp_path_factory.mktemp("broker")) as b:
        yield b


@pytest.fixture(scope="session")
def kcfg(broker):
    return KafkaConfig(bootstrap_servers=broker.bootstrap_servers, request_timeout_s=5)


@pytest.fixture
def topic_name(request):
    """A fresh topic name per test (the session broker is shared)."""
    base = request.node.name.replace("[", ".").replace("]", "").replace("-", ".")
    return f"t{next(_names)}.{base}"[:200]
