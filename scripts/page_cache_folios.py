#!/usr/bin/env python3
"""How much of each file's page cache lies in large folios (the kernel's compound pages).

Maps each file read-only, touches every page (so the mapping points at the page cache the
file has now, filling what is missing), then looks each page's frame up in
``/proc/self/pagemap`` and its flags in ``/proc/kpageflags`` (proc(5): KPF_COMPOUND_HEAD,
bit 15; KPF_COMPOUND_TAIL, bit 16). Needs root (frame numbers are hidden otherwise).

A page cache in large folios is read faster than one in 4 KiB pages (fewer folios per
byte copied). docs/speed.md uses this to explain warm re-reads through a FUSE mount: on
this machine's kernel the FUSE page cache holds 4 KiB pages only, an ext4 file's page cache
large folios.

Usage: sudo python3 scripts/page_cache_folios.py FILE [FILE ...]
"""

from __future__ import annotations

import mmap
import os
import struct
import sys

PAGE = mmap.PAGESIZE
PRESENT = 1 << 63
PFN_MASK = (1 << 55) - 1
COMPOUND_HEAD, COMPOUND_TAIL = 1 << 15, 1 << 16


def folio_counts(path: str) -> tuple[int, int, int]:
    """(pages, pages in large folios, large folios) of ``path``'s page cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        pages = size // PAGE
        with mmap.mmap(fd, size, prot=mmap.PROT_READ) as mapping:
            for i in range(pages):
                mapping[i * PAGE]
            start = mapped_at(path)
            large = heads = 0
            with open("/proc/self/pagemap", "rb", buffering=0) as pagemap, \
                    open("/proc/kpageflags", "rb", buffering=0) as kpageflags:
                for i in range(pages):
                    (entry,) = struct.unpack("Q", os.pread(pagemap.fileno(), 8,
                                                           (start // PAGE + i) * 8))
                    if not entry & PRESENT:
                        continue
                    (flags,) = struct.unpack("Q", os.pread(kpageflags.fileno(), 8,
                                                           (entry & PFN_MASK) * 8))
                    if flags & (COMPOUND_HEAD | COMPOUND_TAIL):
                        large += 1
                        heads += bool(flags & COMPOUND_HEAD)
    finally:
        os.close(fd)
    return pages, large, heads


def mapped_at(path: str) -> int:
    """The start address of this process's mapping of ``path``."""
    real = os.path.realpath(path)
    with open("/proc/self/maps") as maps:
        for line in maps:
            if line.rstrip("\n").endswith(real):
                return int(line.split("-", 1)[0], 16)
    raise LookupError(f"{path} is not mapped")


def main() -> None:
    for path in sys.argv[1:]:
        pages, large, heads = folio_counts(path)
        print(f"{path}: {pages} pages of {PAGE} bytes; {large} in {heads} large folios, "
              f"{pages - large} in 4 KiB pages")


if __name__ == "__main__":
    main()
