"""spark-defaults.conf is read as Spark reads it: java.util.Properties syntax."""
from ddp_kbit.config import SparkConfig
from ddp_kbit.launch.spark import read_conf, session_conf

CONF = r"""# comment
! also a comment
spark.a  1
spark.b=2
spark.c : 3
	spark.d	four five
spark.e = first \
    second
spark.f\ g = x\ty
spark.u=\u0041
spark.empty
"""


def test_java_properties_syntax(tmp_path):
    f = tmp_path / "spark-defaults.conf"
    f.write_text(CONF)
    assert read_conf(f) == {"spark.a": "1", "spark.b": "2", "spark.c": "3", "spark.d": "four five",
                            "spark.e": "first second", "spark.f g": "x\ty", "spark.u": "A", "spark.empty": ""}


def test_flags_override_the_file_and_local_master_gets_a_slot_per_process(tmp_path):
    (tmp_path / "spark-defaults.conf").write_text("spark.master local[2]\nspark.task.cpus=1\n")
    conf = session_conf(SparkConfig(num_processes=3, conf=("spark.task.cpus=2",), conf_dir=str(tmp_path)))
    assert conf["spark.master"] == "local[3]" and conf["spark.task.cpus"] == "2"


def test_gpu_loads_scheduling_and_a_runnable_discovery_script_not_rapids():
    import os

    conf = session_conf(SparkConfig(gpu=True))
    assert conf["spark.task.resource.gpu.amount"] == "1"
    assert "spark.plugins" not in conf   # RAPIDS only with --rapids
    for key in ("spark.executor.resource.gpu.discoveryScript", "spark.driver.resource.gpu.discoveryScript"):
        assert os.path.isabs(conf[key]) and os.access(conf[key], os.X_OK), conf[key]


def test_rapids_without_its_jar_is_one_line(tmp_path):
    import pytest

    from ddp_kbit.errors import ConfigError
    from ddp_kbit.launch.spark import check_rapids_jar

    with pytest.raises(ConfigError, match=r"--rapids loads com.nvidia.spark.SQLPlugin, but no rapids-4-spark"):
        session_conf(SparkConfig(rapids=True))
    jar = tmp_path / "rapids-4-spark_2.13-25.02.0.jar"
    jar.write_bytes(b"")
    conf = session_conf(SparkConfig(rapids=True, conf=(f"spark.jars={jar}",)))
    assert conf["spark.plugins"] == "com.nvidia.spark.SQLPlugin" and conf["spark.task.resource.gpu.amount"] == "1"
    (tmp_path / "jars").mkdir()
    (tmp_path / "jars" / jar.name).write_bytes(b"")
    check_rapids_jar({"spark.plugins": "com.nvidia.spark.SQLPlugin"}, spark_home=str(tmp_path))
