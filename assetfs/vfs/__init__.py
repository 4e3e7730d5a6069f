"""The virtual filesystem: pyfuse3 operations over inodes, metadata and the block cache."""
