"""Point-cloud models: PointNet++ backbone, heads and the point ops they use."""
