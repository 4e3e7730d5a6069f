"""The seeded inventory of the Resonite IO test peer (peers/resonite_peer.py): real PNG and
WebP thumbnails drawn with Pillow, nested folders, links, duplicate names, items without a
thumbnail, non-ASCII names and a name holding a ``/``.

The tree, as the game would list it (``*`` = no thumbnail)::

    /Inventory
      Avatars/            Robot Avatar (png), Kitsune ☆ Fox (webp), Chair (webp), Chair (png)
      Worlds/             My Home (webp), Empty World*
      Objects/            Lamp/Desk (png), Mystery (unknown kind, png)
        Nested/Deeper/    Tiny Cube (png)
      Empty Folder/
      Shared Worlds       link -> /Inventory/Worlds
      Broken Link         link -> a folder that does not exist
      Bulk<N>/            N items "Item 00000".. (webp) for each N in ``bulk``
"""

from __future__ import annotations

import io
import itertools
import uuid
from dataclasses import dataclass, field

from PIL import Image, ImageDraw

OWNER = "U-assetfs-peer"
"""The signed-in user id; links carry ``resrec:///OWNER/<path>``."""
BASE_NS = 1_767_225_600_000_000_000
"""2026-01-01 UTC in ns: seeded modification times count up from here."""

DIRECTORY, OBJECT, WORLD, LINK, UNKNOWN = 1, 2, 3, 4, 5
"""``InventoryEntryKind`` numbers (docs/backends/resonite.md)."""


@dataclass(eq=False)
class Node:
    """One record. ``children`` (creation order) for folders; ``asset_uri`` of a link is the
    ``resrec:///`` URI of its target folder."""

    name: str
    kind: int
    record_id: str
    asset_uri: str = ""
    is_public: bool = False
    mtime_ns: int = 0
    thumbnail: bytes | None = None
    content_type: str = ""
    children: list[Node] = field(default_factory=list)

    @property
    def is_folder(self) -> bool:
        """Folders and links list; items do not."""
        return self.kind in (DIRECTORY, LINK)


def image(colour: tuple[int, int, int], fmt: str, label: str = "", size: int = 96) -> bytes:
    """A ``size`` x ``size`` picture in ``fmt`` (``"PNG"``, ``"WEBP"``) filled with
    ``colour`` with a lighter disc and ``label`` drawn on it."""
    picture = Image.new("RGB", (size, size), colour)
    draw = ImageDraw.Draw(picture)
    lighter = tuple(min(255, c + 90) for c in colour)
    draw.ellipse((size // 6, size // 6, size * 5 // 6, size * 5 // 6), fill=lighter)
    if label:
        draw.text((6, 6), label[:10], fill=(0, 0, 0))
    out = io.BytesIO()
    picture.save(out, fmt, **({"quality": 80} if fmt == "WEBP" else {}))
    return out.getvalue()


_ticks = itertools.count(1)


def record_id() -> str:
    """A fresh record id, ``R-<32 hex digits>`` (random, so ids stay unique when a
    restarted peer carries on from a saved inventory)."""
    return f"R-{uuid.uuid4().hex}"


def _item(name: str, kind: int, colour: tuple[int, int, int] | None, fmt: str = "WEBP") -> Node:
    node = Node(name, kind, record_id(), asset_uri=f"resdb:///{uuid.uuid4().hex}.brson",
                mtime_ns=BASE_NS + next(_ticks) * 1_000_000_000)
    if colour is not None:
        node.thumbnail = image(colour, fmt, name)
        node.content_type = "image/webp" if fmt == "WEBP" else "image/png"
    return node


def _folder(name: str, *children: Node, kind: int = DIRECTORY, target: str = "") -> Node:
    return Node(name, kind, record_id() if kind == LINK else "",
                asset_uri=f"resrec:///{OWNER}{target}" if kind == LINK else "",
                mtime_ns=BASE_NS, children=list(children))


def seed(bulk: tuple[int, ...] = ()) -> Node:
    """The root ``Inventory`` folder of a fresh peer; for each ``n`` in ``bulk`` a folder
    ``/Inventory/Bulk<n>`` of ``n`` items (a few distinct WebP pictures, repeated)."""
    root = _folder(
        "Inventory",
        _folder(
            "Avatars",
            _item("Robot Avatar", OBJECT, (40, 90, 200), "PNG"),
            _item("Kitsune ☆ Fox", OBJECT, (220, 120, 30)),
            _item("Chair", OBJECT, (120, 60, 20)),
            _item("Chair", OBJECT, (20, 140, 90), "PNG"),
        ),
        _folder("Worlds", _item("My Home", WORLD, (90, 160, 60)),
                _item("Empty World", WORLD, None)),
        _folder(
            "Objects",
            _folder("Nested", _folder("Deeper", _item("Tiny Cube", OBJECT, (200, 30, 60), "PNG"))),
            _item("Lamp/Desk", OBJECT, (230, 210, 40), "PNG"),
            _item("Mystery", UNKNOWN, (100, 100, 100), "PNG"),
        ),
        _folder("Empty Folder"),
        _folder("Shared Worlds", kind=LINK, target="/Inventory/Worlds"),
        _folder("Broken Link", kind=LINK, target="/Inventory/Nowhere"),
    )
    root.children[0].children[0].is_public = True
    pictures = [image((i * 37 % 256, i * 91 % 256, i * 53 % 256), "WEBP") for i in range(8)]
    for n in bulk:
        items = [
            Node(f"Item {i:05d}", OBJECT, record_id(), asset_uri=f"resdb:///bulk{n}-{i}.brson",
                 mtime_ns=BASE_NS + i, thumbnail=pictures[i % 8], content_type="image/webp")
            for i in range(n)
        ]
        root.children.append(_folder(f"Bulk{n}", *items))
    return root
