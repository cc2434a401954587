"""Point-cloud models: PointNet++ SSG and PointNet-MSG backbones, heads, the encoder table and the point ops."""
