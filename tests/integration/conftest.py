"""Integration fixtures: a real embedded broker (tansu) on a free port, and one real
local Spark session for the whole session (runs through the Python API reuse it;
the tests that must be separate processes — Ctrl-C, spark-submit, the cluster, GPU
scheduling — start their own)."""
import itertools

import pytest

from ddp_kbit.config import KafkaConfig, SparkConfig
from ddp_kbit.kafka.broker import EmbeddedBroker

_names = itertools.count()
SLOTS = 3   # local[3]: barrier stages of up to 3 ranks


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    with EmbeddedBroker(tmp_path_factory.mktemp("broker")) as b:
        yield b


@pytest.fixture(scope="session")
def kcfg(broker):
    return KafkaConfig(bootstrap_servers=broker.bootstrap_servers, request_timeout_s=5)


@pytest.fixture(scope="session")
def spark():
    """The session every in-process run uses (``fit`` leaves an active session running)."""
    from ddp_kbit.launch import spark as launch

    session = launch.get_session(SparkConfig(num_processes=SLOTS))
    yield session
    launch.stop_session()


@pytest.fixture
def topic_name(request):
    """A fresh topic name per test (the session broker is shared)."""
    base = request.node.name.replace("[", ".").replace("]", "").replace("-", ".")
    return f"t{next(_names)}.{base}"[:200]
