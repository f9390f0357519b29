"""Left/right class pairs, found from class names, for augmentation that mirrors the patient.

A left-right flip of an axial or coronal slice moves the left hippocampus to where the right one lies. If the label
keeps saying ``hippocampus_L`` the model is taught that the two sides are the same class, and it answers with both
(measured on colin27-aal: 10-42 % of each structure's predicted voxels lay in its contralateral partner). The
flip is right only when it also exchanges the paired labels, as SynthSeg's lateral flip does.

:func:`mirror_pairs` pairs class names that differ only in one laterality token: ``hippocampus_L`` /
``hippocampus_R``, ``Left-Putamen`` / ``Right-Putamen``, ``kidney left`` / ``kidney right``, ``lh.insula`` /
``rh.insula``. Tokens are the name's parts between ``_``, ``-``, ``.`` and spaces, compared case-insensitively; a
side pairs with the same spelling of the other side (``L`` with ``R``, ``left`` with ``right``, ``lh`` with ``rh``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

LEFT = ("l", "left", "lh", "lt")
RIGHT = ("r", "right", "rh", "rt")
_SIDE = {t: ("L", i) for i, t in enumerate(LEFT)} | {t: ("R", i) for i, t in enumerate(RIGHT)}
_SPLIT = re.compile(r"([_\-.\s]+)")

LATERAL_FLIP_MODES = ("swap", "off", "plain")


def _key(parts: list[str], at: int, side: str, kind: int) -> tuple[str, ...]:
    """The name's tokens (lower case) with the laterality token at ``at`` replaced by a side marker."""
    return tuple(f"<{side}{kind}>" if i == at else p.lower() for i, p in enumerate(parts) if i % 2 == 0)


def mirror_pairs(classes: Mapping[int, str]) -> list[tuple[int, int]]:
    """``(left_id, right_id)`` pairs of classes whose names differ only in a left/right token.

    Args:
        classes: class id -> name.

    Returns:
        The pairs, sorted by the left id; a class is in at most one pair (a name with two laterality tokens, or
        an ambiguous match, pairs with nothing).
    """
    by_key: dict[tuple[str, ...], list[int]] = {}
    for cid, name in classes.items():
        parts = _SPLIT.split(str(name).strip())
        for i in range(0, len(parts), 2):
            hit = _SIDE.get(parts[i].lower())
            if hit is not None:
                by_key.setdefault(_key(parts, i, *hit), []).append(int(cid))
    pairs: list[tuple[int, int]] = []
    used: set[int] = set()
    for key, ids in sorted(by_key.items()):
        if len(ids) != 1:
            continue
        marker = next((p for p in key if p.startswith("<L")), None)
        if marker is None:  # a right-side name: paired from its left partner
            continue
        other = tuple(p.replace("<L", "<R") if p == marker else p for p in key)
        rights = by_key.get(other, [])
        left, right = ids[0], (rights[0] if len(rights) == 1 else None)
        if right is None or left == right or left in used or right in used:
            continue
        pairs.append((left, right))
        used.update((left, right))
    return sorted(pairs)


def swap_table(pairs: list[tuple[int, int]] | tuple[tuple[int, int], ...], size: int) -> list[int]:
    """A lookup table ``t`` of length ``size`` with ``t[a] = b`` and ``t[b] = a`` for every pair, else identity."""
    table = list(range(size))
    for a, b in pairs:
        table[a], table[b] = b, a
    return table
