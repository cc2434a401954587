"""SpatioTemporalSegmentation's Res16UNet34 as the original DepthContrast code configures it: the numbers both
MinkUNet34 builds share (models/minkunet.py on spconv, models/minkunet_me.py on MinkowskiEngine); no imports."""

PLANES = (32, 64, 128, 256, 256, 256, 256, 256)
LAYERS = (2, 3, 4, 6, 2, 2, 2, 2)
INIT_DIM = 32
CONV1_KERNEL_SIZE = 3
BN_MOMENTUM = 0.02  # Res16UNetBase's non-block norms and _make_layer's downsample norms
BLOCK_BN_MOMENTUM = 0.1  # BasicBlockBase's default
BN_EPS = 1e-5  # MinkowskiBatchNorm's default
EMBEDDING_CHANNELS = PLANES[7]
ORIGINAL_HEAD_DIMS = (256, 256, 128)
DOWNSAMPLINGS = 4
XYZ_COLUMNS = 3  # the voxel features start with the mean x, y, z (data/voxelize.py), which MinkUNet does not read
