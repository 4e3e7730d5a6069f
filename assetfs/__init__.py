"""assetfs: mount remote asset stores as ordinary folders through FUSE."""

__version__ = "0.1.0"
