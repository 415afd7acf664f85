"""The words for what a pair does, in one place: pair kinds (what ``top_pairs`` ranks) and sign patterns.

With f a loss (higher is worse), ``score`` the pair's second difference and ``joint`` the change in f from keeping
both versus neither (see :meth:`InteractionResult.top_pairs`).
"""

from __future__ import annotations

__all__ = ["PAIR_KINDS", "PATTERNS", "pair_pattern"]

# kind -> what it means for the test loss (the report prints these as its section explanations).
PAIR_KINDS = {
    "harmful": ("keeping both raises the test loss, and not as the sum of two single effects: either each alone "
                "already does it (pattern masking: removing one does not undo it, drop both) or they do it only "
                "together (pattern synergistic: removing either one undoes it)"),
    "redundant": "removing either alone is harmless; removing both raises the test loss",
    "complementary": "they lower the test loss only together",
    "interaction": "every pair, ranked by the size of its interaction",
}

# sign pattern of (score, joint) -> what a curation team should do about such a pair.
PATTERNS = {
    "masking": "each alone already does the damage: act on both",
    "synergistic": "damage only together: removing either one breaks it",
    "redundant": "near-duplicates: keep at least one",
    "complementary": "help only together",
}


def pair_pattern(score: float, joint: float) -> str:
    """Name of a pair's sign pattern (f a loss): see InteractionResult.top_pairs."""
    if joint > 0:
        return "synergistic" if score > 0 else "masking"
    return "redundant" if score > 0 else "complementary"
