"""IFEval checkers for English (IFEval's 25 instruction types) and Korean (KoIFEval's 22), and
their strict/loose prompt- and instruction-level scoring. See evaluate.py and registry.py."""

from kollm.ifeval.evaluate import aggregate, loose_variants, score_row, validate_row
from kollm.ifeval.registry import REGISTRY, check

__all__ = ["REGISTRY", "aggregate", "check", "loose_variants", "score_row", "validate_row"]
