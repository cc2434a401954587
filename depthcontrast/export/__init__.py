"""Export pretrained encoders to downstream codebases' layouts, and import the seed's checkpoints."""

from depthcontrast.export.seed_import import SeedImportError, import_seed_checkpoint
from depthcontrast.export.targets import KNOWN_TARGETS, ExportError, export_checkpoint

__all__ = ["KNOWN_TARGETS", "ExportError", "SeedImportError", "export_checkpoint", "import_seed_checkpoint"]
