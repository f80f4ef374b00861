"""Vocabulary pruning: keep the tokens a corpus uses, rebuild the tokenizer, slice the weights.

`prune_vocabulary(model, corpus, out, ...)` is the whole job; the modules below own one step each:
corpus (streaming texts), select (counting, floor, merge closure, id map), tokenizer (reading and
rebuilding tokenizer.json), weights (lazy safetensors slicing), report (the report and progress).
"""

from .pipeline import prune_vocabulary
from .report import REPORT_FILE, TOKEN_MAP_FILE, PruneProgress, PruneReport

__all__ = ["prune_vocabulary", "PruneReport", "PruneProgress", "REPORT_FILE", "TOKEN_MAP_FILE"]
