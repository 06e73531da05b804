"""Protobuf message classes from ``.proto`` text at run time (a user's file, or the
schema a registry returns): compiled with the protoc bundled in grpcio-tools into a
descriptor set, loaded into a pool of its own, so two schemas of the same file name
never collide. Nothing is generated on disk that outlives the call."""
from __future__ import annotations

import hashlib
import os
import tempfile
from functools import lru_cache

from ddp_kbit.errors import ConfigError


@lru_cache(maxsize=64)
def compile_proto(text: str):
    """The FileDescriptor of a schema: ``.proto`` text (imports of google/protobuf/*
    resolve), or a base64 serialized FileDescriptorProto, the form confluent-kafka's
    ProtobufSerializer registers."""
    described = _serialized_descriptor(text)
    if described is not None:
        return described
    import grpc_tools
    from google.protobuf import descriptor_pb2, descriptor_pool
    from grpc_tools import protoc

    includes = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    name = f"schema_{hashlib.sha256(text.encode()).hexdigest()[:12]}.proto"
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, name), "w", encoding="utf-8") as fh:
            fh.write(text)
        out = os.path.join(d, "set.pb")
        rc = protoc.main(["protoc", f"-I{d}", f"-I{includes}", f"--descriptor_set_out={out}", "--include_imports",
                          os.path.join(d, name)])
        if rc != 0:
            raise ConfigError(f"the protobuf schema does not compile (protoc exit {rc}); check the .proto")
        with open(out, "rb") as fh:
            files = descriptor_pb2.FileDescriptorSet.FromString(fh.read()).file
    pool = descriptor_pool.DescriptorPool()
    for f in files:
        pool.Add(f)
    return pool.FindFileByName(name)


def _serialized_descriptor(text: str):
    import base64
    import binascii

    from google.protobuf import descriptor_pb2, descriptor_pool

    stripped = text.strip()
    if not stripped or any(c.isspace() for c in stripped):
        return None   # .proto text has spaces; base64 has none
    try:
        proto = descriptor_pb2.FileDescriptorProto.FromString(base64.b64decode(stripped, validate=True))
    except (binascii.Error, ValueError, Exception):
        return None
    if not proto.message_type:
        return None
    pool = descriptor_pool.DescriptorPool()
    for dep in proto.dependency:   # well-known types: from the default pool
        dep_fd = descriptor_pool.Default().FindFileByName(dep)
        dep_proto = descriptor_pb2.FileDescriptorProto()
        dep_fd.CopyToProto(dep_proto)
        pool.Add(dep_proto)
    pool.Add(proto)
    return pool.FindFileByName(proto.name)


def message_class(text: str, name: str | None = None, indexes: tuple[int, ...] | None = None):
    """A message class of the schema: by (nested) ``name``, or by the message indexes
    of Confluent framing (``(0,)``: the file's first message), or the first message."""
    from google.protobuf import message_factory

    fd = compile_proto(text)
    if name:
        full = name if "." in name or not fd.package else f"{fd.package}.{name}"
        try:
            desc = fd.pool.FindMessageTypeByName(full)
        except KeyError:
            names = ", ".join(fd.message_types_by_name)
            raise ConfigError(f"--value-message {name}: not in the schema (messages: {names})") from None
    else:
        messages = list(fd.message_types_by_name.values())
        if not messages:
            raise ConfigError("the protobuf schema defines no message")
        path = indexes or (0,)
        try:
            desc = messages[path[0]]
            for i in path[1:]:
                desc = desc.nested_types[i]
        except IndexError:
            raise ConfigError(f"message indexes {list(path)} are not in the schema") from None
    return message_factory.GetMessageClass(desc)
