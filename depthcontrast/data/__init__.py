"""Data layer: raw sources, readers, dataset formats, HDF5 shards. Knows nothing of models."""
