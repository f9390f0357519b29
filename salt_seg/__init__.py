"""salt_seg: SALT and the SVD adapter family for Segment Anything on medical images.

Research software, not a medical device. Heavy dependencies (torch, monai, ...) are imported by the
subpackages that need them, never here, so ``salt-seg --help`` stays instant.

Every package ``__init__`` has one form: a docstring naming what the package offers, then either nothing (packages
used module by module: ``commands``, ``training``, the apps) or explicit re-exports listed in ``__all__``.
``salt_seg.data``, which ``salt-seg --help`` imports, loads its list lazily (PEP 562) so that stays instant.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
