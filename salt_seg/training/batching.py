"""From dataset samples to model prompts and targets, deterministically.

Every random draw in training (which samples form step ``s``, their augmentation, their simulated prompts) is a
pure function of ``(seed, step, sample)``. A resumed run therefore sees exactly the batches an uninterrupted run
would have seen, with no data-loader state to save.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from salt_seg.data import simulate_prompt
from salt_seg.model.sam import InputPrompt
from salt_seg.preprocessing import SliceTransform
from salt_seg.prompts import Prompt


def derive_seed(*parts: object) -> int:
    """A 31-bit seed from any tuple of values (stable across processes and Python runs)."""
    h = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & 0x7FFFFFFF


def batch_indices(step: int, batch_size: int, n: int, seed: int) -> list[int]:
    """The global batch of step ``step``: consecutive chunks of a per-epoch permutation of ``range(n)``."""
    out: list[int] = []
    pos = step * batch_size
    while len(out) < batch_size:
        epoch, offset = divmod(pos, n)
        perm = np.random.default_rng(derive_seed("epoch", seed, epoch)).permutation(n)
        take = min(batch_size - len(out), n - offset)
        out.extend(int(i) for i in perm[offset : offset + take])
        pos += take
    return out


def shard(indices: list[int], rank: int, world_size: int) -> list[int]:
    """This rank's share of a global batch (rank r takes every world_size-th element)."""
    return indices[rank::world_size]


@dataclass
class PromptBatch:
    """Prompts and their binary targets for a batch of images.

    Attributes:
        prompts: ``P`` prompts in model-input coordinates.
        image_index: ``P`` indices into the image batch.
        targets: ``P x 1 x S x S`` float targets in {0, 1}.
        class_ids: ``P`` class ids.
    """

    prompts: list[InputPrompt]
    image_index: list[int]
    targets: torch.Tensor
    class_ids: list[int]


def make_prompts(
    labels: torch.Tensor,
    class_ids: list[int],
    mode: str,
    seeds: list[int],
    *,
    box_jitter: float = 0.1,
    n_points: int = 1,
) -> PromptBatch:
    """Simulate one prompt per (image, class).

    Args:
        labels: ``B x S x S`` integer label maps in model-input space.
        class_ids: the classes to prompt.
        mode: ``box``, ``points``, ``auto`` (class tokens), ``mixed`` (box, points or auto drawn per prompt) or
            ``geometric`` (box or points drawn per prompt; used to pretrain objectness).
        seeds: one seed per image.
        box_jitter, n_points: see :class:`salt_seg.training.config.TrainSection`.

    Geometric prompts are only made for classes present in the slice (no prompt is forced onto an empty
    slice); class-token prompts are made for every class, so the model also learns to answer "absent".
    """

    size = int(labels.shape[-1])
    identity = SliceTransform.create((size, size), size, "longest")
    prompts: list[InputPrompt] = []
    index: list[int] = []
    targets: list[torch.Tensor] = []
    cids: list[int] = []
    for b in range(labels.shape[0]):
        lab = labels[b].cpu().numpy()
        rng = np.random.default_rng(seeds[b])
        for cid in class_ids:
            mask = lab == cid
            m = mode
            if mode == "mixed":
                m = ("box", "points", "auto")[int(rng.integers(3))]
            elif mode == "geometric":
                m = ("box", "points")[int(rng.integers(2))]
            if m == "auto":
                prompt: Prompt | None = Prompt(class_id=cid)
            else:
                if not mask.any():
                    continue
                n_neg = int(rng.integers(2)) if m == "points" else 0  # with or without a negative click
                prompt = simulate_prompt(
                    mask, cid, m, rng, box_jitter=box_jitter, n_positive=n_points, n_negative=n_neg
                )
                if prompt is None:
                    continue
            assert prompt is not None
            prompts.append(InputPrompt.from_prompt(prompt, identity))
            index.append(b)
            targets.append(torch.from_numpy(mask).float()[None])
            cids.append(cid)
    t = torch.stack(targets) if targets else torch.zeros(0, 1, size, size)
    return PromptBatch(prompts, index, t, cids)
