"""My strategies: one acquisition strategy and one init strategy (docs/writing-strategies.md).

Load them with `--plugin docs/examples/my_strategies.py` (or `plugins:` in a config or
suite); then `tempered_entropy` and `shrink_only` are names like the built-ins.
"""

import torch

from engine.schema.registry import Interval
from strategies.acquisition import register, top_k
from strategies.init import register as register_init


@register("tempered_entropy", needs=("logits",), constraints={"temperature": Interval(0, low_open=True)})
def tempered_entropy(outputs, k, rng, temperature: float = 2.0):
    """Highest entropy of softmax(logits / temperature): uncertainty on a softened scale."""
    # outputs.logits: float tensor [N, C] over the unlabeled pool, in pool order.
    probs = torch.softmax(outputs.logits / temperature, dim=1)
    scores = torch.special.entr(probs).sum(dim=1)  # [N]
    return top_k(scores, k)  # the k largest; ties go to the lower position


@register_init("shrink_only", {"shrink": Interval(0, 1)}, effective=lambda p: (float(p["shrink"]), 0.0))
def shrink_only(prev, fresh, shrink: float = 0.5):
    """Warm start with every parameter scaled by `shrink`: shrink and perturb without the perturbation."""
    with torch.no_grad():
        for p in prev.parameters():
            p.mul_(shrink)
    return prev
