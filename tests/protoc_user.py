"""A .proto compiled by protoc into an imported ``*_pb2`` module, as a user of that
.proto would do it (the tests' producers of topics we did not write)."""
import importlib.util
from pathlib import Path


def compile_proto(folder: Path, name: str, text: str):
    from grpc_tools import protoc

    (folder / f"{name}.proto").write_text(text)
    assert protoc.main(["protoc", f"-I{folder}", f"--python_out={folder}", str(folder / f"{name}.proto")]) == 0
    spec = importlib.util.spec_from_file_location(f"{name}_pb2", folder / f"{name}_pb2.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
