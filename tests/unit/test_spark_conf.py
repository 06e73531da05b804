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
