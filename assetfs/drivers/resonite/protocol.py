"""The Resonite IO wire protocol: message classes generated from the project's ``.proto``
files at import time, and the unary methods of each service read from their descriptors.

The ``.proto`` files in ``proto/resonite_io/v1/`` are written from the field numbers in
docs/backends/resonite.md (package ``resonite_io.v1``). No generated code is committed:
on first import ``grpc_tools.protoc`` (grpcio-tools, a dependency) compiles them into
``$XDG_CACHE_HOME/assetfs/resonite-protos/<digest>/``, where ``<digest>`` hashes the
``.proto`` texts and the grpcio-tools version, so a changed file or compiler gives a fresh
build and an unchanged one is compiled once per machine. Only message modules are
generated (``--python_out``); the client callables and the server's method handlers are
built from the service descriptors (:func:`client`, :func:`handler`), which keeps the
generated code free of the absolute ``import resonite_io.v1...`` lines grpc's service
stubs carry.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc

from ...config import default_cache_root

PROTO_ROOT = Path(__file__).parent / "proto"
PROTO_FILES = ("inventory", "connection", "info")
"""The files under ``proto/resonite_io/v1/``, one service each."""


class ProtocolBuildError(RuntimeError):
    """``grpc_tools.protoc`` failed on the project's ``.proto`` files."""


def _digest() -> str:
    sha = hashlib.sha256(importlib.metadata.version("grpcio-tools").encode())
    for name in PROTO_FILES:
        sha.update((PROTO_ROOT / "resonite_io" / "v1" / f"{name}.proto").read_bytes())
    return sha.hexdigest()[:16]


def _compile(target: Path) -> None:
    """Run protoc into a fresh folder beside ``target`` and rename it into place, so a
    concurrent import never sees a half-written build."""
    from grpc_tools import protoc

    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".build-", dir=target.parent))
    try:
        sources = [f"resonite_io/v1/{name}.proto" for name in PROTO_FILES]
        status = protoc.main(
            ["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"--python_out={scratch}", *sources]
        )
        if status != 0:
            raise ProtocolBuildError(f"protoc exited {status} on {PROTO_ROOT}")
        try:
            os.rename(scratch, target)
        except OSError:
            if not target.is_dir():  # another process won the race: use its build
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _load(name: str, build: Path) -> ModuleType:
    file = build / "resonite_io" / "v1" / f"{name}_pb2.py"
    spec = importlib.util.spec_from_file_location(f"{__name__}.{name}_pb2", file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build() -> dict[str, ModuleType]:
    build = default_cache_root() / "resonite-protos" / _digest()
    if not (build / "resonite_io" / "v1").is_dir():
        _compile(build)
    return {name: _load(name, build) for name in PROTO_FILES}


_modules = _build()
inventory_pb2: Any = _modules["inventory"]
connection_pb2: Any = _modules["connection"]
info_pb2: Any = _modules["info"]


@dataclass(frozen=True)
class Method:
    """One unary rpc: ``path`` is the gRPC method path (``/resonite_io.v1.Inventory/List``)."""

    name: str
    path: str
    request: type[Any]
    response: type[Any]


def methods(module: ModuleType, service: str) -> dict[str, Method]:
    """The rpcs of ``service`` (``"Inventory"``) declared in generated ``module``."""
    descriptor = module.DESCRIPTOR.services_by_name[service]
    return {
        m.name: Method(
            m.name,
            f"/{descriptor.full_name}/{m.name}",
            getattr(module, m.input_type.name),
            getattr(module, m.output_type.name),
        )
        for m in descriptor.methods
    }


INVENTORY = methods(inventory_pb2, "Inventory")
CONNECTION = methods(connection_pb2, "Connection")
INFO = methods(info_pb2, "Info")


def client(channel: grpc.Channel, service: Mapping[str, Method]) -> dict[str, Any]:
    """``grpc.UnaryUnaryMultiCallable`` s by rpc name for ``service`` on ``channel``."""
    return {
        name: channel.unary_unary(
            m.path,
            request_serializer=m.request.SerializeToString,
            response_deserializer=m.response.FromString,
        )
        for name, m in service.items()
    }


def handler(
    full_name: str,
    service: Mapping[str, Method],
    implementations: Mapping[str, Callable[[Any, grpc.ServicerContext], Any]],
) -> grpc.GenericRpcHandler:
    """A server handler for ``service`` (named ``full_name``, ``resonite_io.v1.Inventory``)
    whose rpcs call ``implementations[name](request, context)``."""
    return grpc.method_handlers_generic_handler(
        full_name,
        {
            name: grpc.unary_unary_rpc_method_handler(
                implementations[name],
                request_deserializer=m.request.FromString,
                response_serializer=m.response.SerializeToString,
            )
            for name, m in service.items()
        },
    )
