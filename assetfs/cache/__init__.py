"""The on-disk data cache: block cache, write-back journal and upload queue."""
