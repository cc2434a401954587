"""The built-in downstream evaluation: does the pretrained encoder beat a random init on labelled scans?"""

from depthcontrast.evaluate.run import run_evaluation

__all__ = ["run_evaluation"]
