"""The language-model compressor: exact code lengths from a Hugging Face causal LM.

``scorer`` holds :class:`LMScorer` (the contract, the paths and the tile logic); ``plan`` the
host-side pass plans (numpy only); ``passes`` runs them on the device; ``attention`` builds
masks and KV caches from true positions; ``head`` scores only the needed positions in float32;
``budget`` sizes passes from the device's memory.
"""

from nncd_ray.scorers.lm.scorer import PATHS, TRUNCATION_POLICIES, LMScorer

__all__ = ["PATHS", "TRUNCATION_POLICIES", "LMScorer"]
