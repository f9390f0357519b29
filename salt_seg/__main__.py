"""``python -m salt_seg`` (also what ``torchrun -m salt_seg`` runs)."""

from __future__ import annotations

import sys

from salt_seg.cli import main

sys.exit(main())
