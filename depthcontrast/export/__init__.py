"""Export pretrained encoders to downstream code bases' layouts, and import checkpoints of the original
DepthContrast code."""

from depthcontrast.export.original_import import OriginalImportError, import_original_checkpoint
from depthcontrast.export.targets import KNOWN_TARGETS, ExportError, export_checkpoint

__all__ = ["KNOWN_TARGETS", "ExportError", "OriginalImportError", "export_checkpoint", "import_original_checkpoint"]
