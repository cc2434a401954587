"""Dataset formats: turn a manifest's raw files into work units, and a unit into samples.

A *unit* is the smallest piece of work decoded by one worker: one file (PLY, LAS tile, KITTI sweep),
one depth frame, or one sequence file (ScanNet .sens) that yields many samples. Units are planned in
a deterministic order; their samples keep that order in the shards.
"""
