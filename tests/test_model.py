"""POSIX behaviour under fast mutation: a hypothesis rule-based state machine drives a real
mount and a plain local folder (the model) with the same operations over a handful of names
(tests/modelfs.py) and compares every result or errno, the final tree of each example, and,
after unmount, the store with the model.

One mount per test (mounting is slow); each example starts from an empty tree. The size is
``ASSETFS_MODEL_OPS`` operations per test (default 600; ``make test-model`` runs a soak).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule, run_state_machine_as_test
from modelfs import LIST_PATHS, PATHS, Op, clear, tree
from mounting import Mount, mounted

STEPS = 40
"""Operations per example."""
OPS = int(os.environ.get("ASSETFS_MODEL_OPS", "600"))

paths = st.sampled_from(PATHS)


class Model(RuleBasedStateMachine):
    """Applies each rule's operation to ``mount_root`` and ``model_root`` (set by
    :func:`machine`) and asserts the results are equal."""

    mount_root: Path
    model_root: Path

    def __init__(self) -> None:
        super().__init__()
        clear(self.mount_root)
        clear(self.model_root)
        self.done: list[str] = []

    def check(self, op: Op) -> None:
        self.done.append(str(op))
        ours, model = op.apply(self.mount_root), op.apply(self.model_root)
        assert ours == model, f"{op}: mount {ours}, local folder {model}; after {self.done}"

    @rule(path=paths, trunc=st.booleans())
    def create(self, path: str, trunc: bool) -> None:
        self.check(Op("create", path, flag=trunc))

    @rule(path=paths, offset=st.integers(0, 16), data=st.binary(min_size=1, max_size=8),
          create=st.booleans())
    def write(self, path: str, offset: int, data: bytes, create: bool) -> None:
        self.check(Op("write", path, offset=offset, data=data, flag=create))

    @rule(path=paths, size=st.integers(0, 24))
    def truncate(self, path: str, size: int) -> None:
        self.check(Op("truncate", path, size=size))

    @rule(path=paths, other=paths)
    def rename(self, path: str, other: str) -> None:
        self.check(Op("rename", path, other=other))

    @rule(path=paths)
    def unlink(self, path: str) -> None:
        self.check(Op("unlink", path))

    @rule(path=paths)
    def mkdir(self, path: str) -> None:
        self.check(Op("mkdir", path))

    @rule(path=paths)
    def rmdir(self, path: str) -> None:
        self.check(Op("rmdir", path))

    @rule(path=paths)
    def read(self, path: str) -> None:
        self.check(Op("read", path))

    @rule(path=st.sampled_from(LIST_PATHS))
    def listing(self, path: str) -> None:
        self.check(Op("list", path))

    @rule(path=paths)
    def stat(self, path: str) -> None:
        self.check(Op("stat", path))

    @rule()
    def pause(self) -> None:
        """Let the store's events of what came before arrive and be applied."""
        time.sleep(0.05)

    def teardown(self) -> None:
        assert tree(self.mount_root) == tree(self.model_root), f"final tree after {self.done}"


def run_model(mount: Mount, model: Path) -> None:
    """Run :data:`OPS` operations of the state machine on ``mount`` against ``model``."""
    machine = type("BoundModel", (Model,), {"mount_root": mount.path, "model_root": model})
    run_state_machine_as_test(machine, settings=settings(
        max_examples=max(1, OPS // STEPS), stateful_step_count=STEPS, deadline=None,
        database=None, suppress_health_check=list(HealthCheck), print_blob=True,
    ))


@pytest.fixture
def model(tmp_path: Path) -> Path:
    root = tmp_path / "model"
    root.mkdir()
    return root


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    root.mkdir()
    return root


@contextlib.contextmanager
def file_mount(store: Path, tmp_path: Path, delay: str) -> Iterator[Mount]:
    options = {"cache_dir": str(tmp_path / "cache"), "write_back_delay": delay, "timeout": "10"}
    with mounted(f"file://{store}", tmp_path / "mnt", options) as running:
        yield running


@pytest.mark.timeout(0)
@pytest.mark.parametrize("delay", ["0", "0.3"])
def test_file_mount_behaves_as_a_local_folder(
    delay: str, store: Path, model: Path, tmp_path: Path
) -> None:
    """omni.client's file: provider (events on), write-back at once and delayed; the store
    equals the model once unmounted."""
    with file_mount(store, tmp_path, delay) as mount:
        run_model(mount, model)
    assert tree(store) == tree(model)
