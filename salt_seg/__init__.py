"""salt_seg: SALT and the SVD adapter family for Segment Anything on medical images.

Research software, not a medical device. Heavy dependencies (torch, monai, ...) are imported by the
subpackages that need them, never here, so ``salt-seg --help`` stays instant.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
