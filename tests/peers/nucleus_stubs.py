"""Python gRPC stubs of the Storage API that the installed omni.client speaks, generated from
the protobuf descriptors embedded in its own ``libomniclient.so`` (docs/backends/nucleus.md).

Nothing of NVIDIA's is committed: at test set-up (or ``python tests/peers/nucleus_stubs.py``)
the serialized ``FileDescriptorProto`` s of ``nvidia/omniverse/...`` are cut out of the
library, written with their ``google/protobuf`` imports into one ``FileDescriptorSet`` and
turned into ``*_pb2.py`` / ``*_pb2_grpc.py`` by grpcio-tools' ``protoc``. The result is cached
in a folder keyed by the library's SHA-256 (:func:`stub_dir`), so a new omniverseclient gets
new stubs.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

from google.protobuf import descriptor_pb2, struct_pb2, timestamp_pb2

PROTO_NAME = re.compile(rb"\x0a(.)(nvidia/omniverse/[a-z0-9_/]+\.proto)", re.DOTALL)
"""A FileDescriptorProto starts with field 1 (``name``, length-delimited): tag 0x0a, length."""
FILE_FIELDS = {1: 2, 2: 2, 3: 2, 4: 2, 5: 2, 6: 2, 7: 2, 8: 2, 9: 2, 10: 0, 11: 0, 12: 2,
               13: 2, 14: 0}
"""FileDescriptorProto field number -> wire type (descriptor.proto): where these stop, the
serialized descriptor ends."""
MODULES = {
    "capabilities": "nvidia.omniverse.storage.capabilities.v1alpha.capabilities",
    "fileobject": "nvidia.omniverse.storage.fileobject.v1alpha.fileobject",
    "fileobject_service": "nvidia.omniverse.storage.fileobject.v1alpha.fileobject_service",
    "filefolder": "nvidia.omniverse.storage.filefolder.v1alpha.filefolder_service",
    "versioning": "nvidia.omniverse.storage.versioning.v1alpha.versioning",
    "metadata": "nvidia.omniverse.storage.metadata.v1alpha.metadata",
    "events": "nvidia.omniverse.notifications.consumer.v1beta.event_consumer",
}
"""Short name -> the generated module (without ``_pb2``) the peer uses."""


def library_path() -> Path:
    """The installed ``libomniclient.so`` (raises ImportError without omniverseclient)."""
    import omni.client

    return Path(omni.client.__file__).parent / "libomniclient.so"


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def _descriptor_length(data: bytes, start: int) -> int:
    """Bytes of the FileDescriptorProto at ``start``: fields are read while their number and
    wire type are those of a FileDescriptorProto."""
    at = start
    while at < len(data):
        try:
            tag, after = _varint(data, at)
            number, wire = tag >> 3, tag & 7
            if FILE_FIELDS.get(number) != wire:
                break
            length, after = _varint(data, after)
            if wire == 2:
                after += length
        except IndexError:
            break
        if after > len(data):
            break
        at = after
    return at - start


def embedded_descriptors(library: Path) -> list[descriptor_pb2.FileDescriptorProto]:
    """Every ``nvidia/omniverse/*.proto`` descriptor serialized in ``library``."""
    data = library.read_bytes()
    found: dict[str, descriptor_pb2.FileDescriptorProto] = {}
    for match in PROTO_NAME.finditer(data):
        if match.group(1)[0] != len(match.group(2)):
            continue
        length = _descriptor_length(data, match.start())
        proto = descriptor_pb2.FileDescriptorProto.FromString(
            data[match.start():match.start() + length])
        found.setdefault(proto.name, proto)
    return list(found.values())


def generate(library: Path, out: Path) -> None:
    """Write the stubs of every descriptor in ``library`` under ``out`` (a package tree)."""
    protos = embedded_descriptors(library)
    if not protos:
        raise RuntimeError(f"no Storage API descriptors found in {library}")
    bundle = descriptor_pb2.FileDescriptorSet()
    for module in (struct_pb2, timestamp_pb2):
        known = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(known)
        bundle.file.append(known)
    bundle.file.extend(protos)
    with tempfile.TemporaryDirectory() as work:
        descriptor_set = Path(work, "storage.pb")
        descriptor_set.write_bytes(bundle.SerializeToString())
        subprocess.run(
            [sys.executable, "-m", "grpc_tools.protoc", f"--descriptor_set_in={descriptor_set}",
             f"--python_out={out}", f"--grpc_python_out={out}", *(p.name for p in protos)],
            check=True,
        )


def stub_dir() -> Path:
    """The cache folder holding (after :func:`ensure`) the stubs of the installed library:
    ``$ASSETFS_STUB_DIR``, or ``$XDG_CACHE_HOME/assetfs-tests/nucleus-stubs/<sha256 of the
    library>`` (``~/.cache`` without XDG_CACHE_HOME)."""
    if os.environ.get("ASSETFS_STUB_DIR"):
        return Path(os.environ["ASSETFS_STUB_DIR"])
    digest = hashlib.sha256(library_path().read_bytes()).hexdigest()[:16]
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "assetfs-tests" / "nucleus-stubs" / digest


def ensure() -> Path:
    """Generate the stubs into :func:`stub_dir` unless already there; return the folder.
    Generated in a sibling temporary folder and renamed, so concurrent runs never see half."""
    target = stub_dir()
    if (target / "nvidia").is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=target.parent, prefix=".gen-"))
    try:
        generate(library_path(), work)
        try:
            work.rename(target)
        except OSError:  # another run finished first
            if not (target / "nvidia").is_dir():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def load() -> dict[str, tuple[ModuleType, ModuleType]]:
    """Short name (:data:`MODULES`) -> (``_pb2`` module, ``_pb2_grpc`` module)."""
    folder = str(ensure())
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return {
        short: (importlib.import_module(name + "_pb2"), importlib.import_module(name + "_pb2_grpc"))
        for short, name in MODULES.items()
    }


if __name__ == "__main__":
    print(ensure())
