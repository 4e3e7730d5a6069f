"""pytest fixtures shared by the OMERO.fs tests: the served tree (built once per module),
the real servers (started per test, stopped by pid) and a scratch folder inside the tree
for server-side changes."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from omerofs_peer import OmeroFS, make_tree, omerofs_servers


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """(root of the served tree, relative path -> sha256 of every file)."""
    root = tmp_path_factory.mktemp("omero") / "tree"
    return root, make_tree(root)


@pytest.fixture
def servers(tree: tuple[Path, dict[str, str]], tmp_path: Path) -> Iterator[OmeroFS]:
    """fsServerFS + fsServerMS serving ``tree`` on 127.0.0.1."""
    with omerofs_servers(tree[0], tmp_path / "servers") as peer:
        yield peer


@pytest.fixture
def live(tree: tuple[Path, dict[str, str]]) -> Iterator[Path]:
    """A scratch folder inside the served tree for server-side changes."""
    folder = tree[0] / "live"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    yield folder
    shutil.rmtree(folder, ignore_errors=True)
