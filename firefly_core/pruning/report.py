"""What a pruning run did: the report (printed and saved as prune_report.json) and progress events."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

REPORT_FILE = "prune_report.json"
TOKEN_MAP_FILE = "token_map.json"  # new id -> id in the first original model
SOURCE_TOKEN_MAP_FILE = "token_map_source.json"  # new id -> id in this run's source (a pruned model)


@dataclass
class PruneProgress:
    """One progress step: `stage` is "count" (units: corpus bytes), "weights" (tensors) or "done"."""

    stage: str
    done: int
    total: int
    detail: str = ""


@dataclass
class PruneReport:
    """Vocabulary, parameters and corpus coverage before and after pruning."""

    model: str
    out: str
    vocab_before: int
    vocab_after: int
    params_before: int  # tied embedding/lm_head counted once
    params_after: int
    corpus_files: list[str]
    corpus_tokens: int  # tokens in the corpus, by the original tokenizer
    corpus_tokens_covered: int  # of those, tokens whose id is kept
    distinct_tokens_seen: int
    kept_floor: int  # specials, bytes, config ids, --keep-file tokens and their merge paths
    kept_by_count: int
    kept_by_closure: int  # intermediate tokens kept only so that merges still work
    tied: bool
    dtype: str
    rule: dict[str, Any] = field(default_factory=dict)  # keep_top / min_count / keep_file
    seconds: float = 0.0
    pruned_from: list[str] = field(default_factory=list)  # the chain of models, first original first
    warnings: list[str] = field(default_factory=list)  # things the user should know (keep file)

    @property
    def coverage(self) -> float:
        return self.corpus_tokens_covered / self.corpus_tokens if self.corpus_tokens else 0.0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["coverage"] = self.coverage
        data["vocab_ratio"] = self.vocab_after / self.vocab_before
        data["params_ratio"] = self.params_after / self.params_before if self.params_before else 0.0
        return data

    def summary(self) -> str:
        """A few lines for a terminal."""
        return "\n".join(
            [
                f"pruned {self.model} -> {self.out}",
                f"  vocabulary  {self.vocab_before:>14,} -> {self.vocab_after:,} "
                f"({self.vocab_after / self.vocab_before:.2%})",
                f"  parameters  {self.params_before:>14,} -> {self.params_after:,} "
                f"({self.params_after / max(self.params_before, 1):.2%}; "
                f"{'tied' if self.tied else 'untied'} embeddings, {self.dtype})",
                f"  kept        {self.kept_floor:,} always, {self.kept_by_count:,} by count, "
                f"{self.kept_by_closure:,} for merge paths",
                f"  corpus      {self.corpus_tokens:,} tokens, {self.distinct_tokens_seen:,} distinct; "
                f"{self.coverage:.4%} covered by the kept vocabulary",
                f"  time        {self.seconds:.1f} s",
                *(f"  from        {' -> '.join(self.pruned_from)}" for _ in [0] if len(self.pruned_from) > 1),
                *(f"  warning     {w}" for w in self.warnings),
            ]
        )
