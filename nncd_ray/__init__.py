"""nncd_ray: Neural Normalized Compression Distance matrices with language models on Ray.

Importing the package is cheap: torch, transformers, Ray and Zarr load only when the part
that needs them is used.
"""

from __future__ import annotations

__version__ = "0.1.0"

from nncd_ray.errors import NNCDError

__all__ = ["NNCDError", "__version__"]
