"""Name resolution against changes that arrive while a remote lookup waits (metadata.py,
stamps): a listing or a stat fetched before an event and stored after it would bring back
what the event removed until the cache's TTL ends (300 s with live events). Driven here
with a store whose answers the test releases, since a real store answers too fast to place
an event inside the wait on purpose."""

from __future__ import annotations

import types
from typing import Any, cast

import trio

from assetfs import errors, retry
from assetfs.cache.blocks import BlockCache
from assetfs.drivers.base import Driver, Entry, Kind
from assetfs.remote import Remote
from assetfs.vfs.metadata import MetadataCache
from assetfs.vfs.mtimes import MtimeOverlay
from assetfs.vfs.namespace import Namespace


def entry(name: str) -> Entry:
    return Entry(name=name, kind=Kind.FILE, size=1, mtime_ns=1, version="1")


class HeldStore:
    """A driver whose ``list``/``stat`` answer with the store's state at the moment they
    were asked, but only once the test releases them."""

    def __init__(self) -> None:
        self.names = {"a.txt", "gone.txt"}
        self.release = trio.Event()
        self.asked = 0

    def describe(self, path: str) -> str:
        return path

    async def list(self, folder: str) -> list[Entry]:
        answer = [entry(n) for n in sorted(self.names)]
        self.asked += 1
        await self.release.wait()
        return answer

    def known_entry(self, path: str) -> Entry | None:
        return None  # every lookup asks the store (Driver.known_entry's default)

    async def stat(self, path: str) -> Entry:
        name = path.rsplit("/", 1)[1]
        answer = entry(name) if name in self.names else None
        self.asked += 1
        await self.release.wait()
        if answer is None:
            raise errors.NotFound()
        return answer


def namespace(store: HeldStore, metadata: MetadataCache) -> Namespace:
    plain = types.SimpleNamespace(apply=lambda path, e: e)
    return Namespace(
        Remote(cast(Driver, store), retry.RetryPolicy()),
        metadata,
        cast(BlockCache, types.SimpleNamespace(shadowing=lambda path: None,
                                               shadowing_children=lambda folder: ())),
        cast(MtimeOverlay, plain),
    )


async def deletion_during(fetch: Any, store: HeldStore, metadata: MetadataCache) -> Any:
    """Run ``fetch()`` while ``gone.txt`` is deleted on the store and its event applied
    (as the invalidator does) after the store was asked and before it answered."""
    result: list[Any] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: _keep(fetch, result))
        while store.asked == 0:
            await trio.sleep(0)
        store.names.discard("gone.txt")
        metadata.forget("/gone.txt")
        metadata.forget_listing("/")
        metadata.put("/gone.txt", None)
        store.release.set()
    return result[0]


async def _keep(fetch: Any, result: list[Any]) -> None:
    result.append(await fetch())


async def test_listing_fetched_before_a_deletion_is_not_stored_after_it() -> None:
    store, metadata = HeldStore(), MetadataCache(ttl=300)
    ns = namespace(store, metadata)
    await deletion_during(lambda: ns.listing("/"), store, metadata)
    assert set(await ns.listing("/")) == {"a.txt"}
    assert await ns.find("/gone.txt") is None
    assert store.asked == 2  # the first answer predated the event: asked again


async def test_stat_fetched_before_a_deletion_is_not_stored_after_it() -> None:
    store, metadata = HeldStore(), MetadataCache(ttl=300)
    ns = namespace(store, metadata)
    found = await deletion_during(lambda: ns.find("/gone.txt"), store, metadata)
    assert found is None  # what the event left wins over the older answer
    assert await ns.find("/gone.txt") is None
