"""The one rule that turns RFNet's probabilities into what people are shown: a verdict and reasons.

Evaluation, pre-labels, the ML backend and push all call `decide`, so the metrics describe the
decision annotators see. `available` means p(available) >= threshold; the threshold is chosen on a
validation split for a target precision and travels with the checkpoint and its predictions
(DEFAULT_THRESHOLD when none was chosen). Not an argmax: with p(available) = 0.45 and four failures
at 0.1375 the argmax says available, yet the model gives more than half its mass to "not available".
"""

from __future__ import annotations

from collections.abc import Mapping

DEFAULT_THRESHOLD = 0.5


def decide(p_available: float, p_reasons: Mapping[str, float], threshold: float | None = None) -> dict:
    """{"verdict", "reasons", "score"} for one sample.

    Reasons (only when not available), most likely first: those the model is sure of (p >= 0.5), else its
    most likely one, because a softmax head spreads the mass of several failures over several classes.
    """
    t = DEFAULT_THRESHOLD if threshold is None else float(threshold)
    score = float(p_available)
    if score >= t:
        return {"verdict": "available", "reasons": [], "score": score}
    ranked = sorted(p_reasons, key=lambda r: -float(p_reasons[r]))
    reasons = [r for r in ranked if float(p_reasons[r]) >= 0.5] or ranked[:1]
    return {"verdict": "not_available", "reasons": reasons, "score": score}
