"""DPO: the loss (sigmoid, or IPO) on log-probs of the answers, and the reference model.

The reference is the starting model, in one of three ways (chosen once per run by `Reference`):

- with LoRA, the same model with its adapter switched off (peft's `disable_adapter()`): no copy;
- otherwise a frozen copy of the starting model, made before any step;
- or, with --precompute-ref, the reference log-probs of every pair computed once before
  training (kept with the pairs, no model copy), for when a second copy does not fit.

The formulas are TRL's (`DPOTrainer`), so TRL is the test oracle: for a batch, chosen and rejected
log-probs summed over answer tokens; per side the log-ratio policy - reference; sigmoid:
-log σ(β·(chosen ratio - rejected ratio)); IPO: each ratio divided by its answer's token count,
then (difference - 1/(2β))². Rewards are β·(policy - reference) per side (summed log-probs).
"""

from __future__ import annotations

import copy
import math

from .losses import answer_logps

METRICS = 4  # chosen reward sum, rejected reward sum, correct pairs, margin sum


def answer_tokens(batch):
    """(rows,) answer tokens per row (what IPO normalises by)."""
    return (batch["labels"][:, 1:] != -100).sum(-1)


def dpo_losses(policy, reference, beta: float, loss_type: str = "sigmoid", tokens=None):
    """Per-pair losses and rewards from (2n,) summed log-probs laid out chosen rows then rejected
    rows (`tokens`: answer tokens per row, needed by IPO)."""
    import torch.nn.functional as F

    n = policy.size(0) // 2
    ratios = policy - reference.to(policy.dtype)
    chosen, rejected = ratios[:n], ratios[n:]
    if loss_type == "ipo":
        lengths = tokens.to(policy.dtype).clamp(min=1)
        losses = (chosen / lengths[:n] - rejected / lengths[n:] - 1 / (2 * beta)) ** 2
    else:
        losses = -F.logsigmoid(beta * (chosen - rejected))
    return losses, beta * chosen.detach(), beta * rejected.detach()


class Reference:
    """Reference log-probs for a batch, from whichever reference this run uses."""

    def __init__(self, model, config, accelerator, single_process: bool = False) -> None:
        self.accelerator = accelerator
        self.single_process = single_process
        self.mode = "adapter-off" if config.lora else ("precomputed" if config.precompute_ref else "copy")
        self.copy = None
        if self.mode == "copy":
            # Before any step and before accelerate wraps the model: the starting weights.
            self.copy = copy.deepcopy(model).eval().requires_grad_(False)

    def place(self) -> None:
        if self.copy is not None:
            self.copy.to(self.accelerator.device)

    def logps(self, model, batch):
        import torch

        if self.mode == "precomputed":
            return batch["ref_logps"]
        with torch.no_grad(), self.accelerator.autocast():
            if self.mode == "copy":
                return answer_logps(self.copy, batch, self.single_process)
            unwrapped = self.accelerator.unwrap_model(model)
            with unwrapped.disable_adapter():
                return answer_logps(unwrapped, batch, self.single_process)

    def precompute(self, model, items, batch_size: int, collate) -> None:
        """Fill `item.ref` for every pair with the (still untrained) model's log-probs."""
        import torch

        if self.mode != "precomputed":
            return
        was_training = model.training
        model.eval()
        with torch.no_grad(), self.accelerator.autocast():
            for k in range(0, len(items), batch_size):
                chunk = items[k : k + batch_size]
                for t in chunk:
                    t.ref = None
                batch = {key: v.to(self.accelerator.device) for key, v in collate(chunk).items()}
                values = answer_logps(model, batch, self.single_process).double().cpu().tolist()
                n = len(chunk)
                for i, t in enumerate(chunk):
                    t.ref = (values[i], values[n + i])
        model.train(was_training)


def pair_loss_sum(model, batch, reference: Reference, beta: float, loss_type: str):
    """Summed DPO loss of a batch's pairs, and its metric sums (METRICS values)."""
    import torch

    policy = answer_logps(model, batch, reference.single_process)
    ref = reference.logps(model, batch)
    losses, chosen, rejected = dpo_losses(policy, ref, beta, loss_type, answer_tokens(batch))
    metrics = torch.stack([chosen.sum(), rejected.sum(), (chosen > rejected).float().sum(),
                           (chosen - rejected).sum()]).float()
    return losses.sum(), metrics


def reward_fields(metrics, pairs: int) -> dict:
    """StepEvent's reward fields from summed metrics over `pairs` pairs."""
    if metrics is None or pairs <= 0:
        return {}
    c, r, correct, margin = (float(x) for x in metrics)
    out = {"chosen_reward": c / pairs, "rejected_reward": r / pairs, "reward_accuracy": correct / pairs,
           "reward_margin": margin / pairs}
    return {k: round(v, 6) for k, v in out.items() if math.isfinite(v)}

