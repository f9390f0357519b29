"""Each training step's batches, made ahead in worker processes (``train.num_workers``).

A step's batches are a pure function of ``(seed, step)`` (:mod:`salt_seg.training.batching`), so workers can make
them in any order and the run is the same as the serial one, value for value: the same samples, augmentations and
prompts; only the wall-clock changes. Workers matter where making a sample costs as much as the step itself
(the synthetic anatomy stream of ``salt-seg pretrain`` on a GPU).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import torch

from salt_seg.training.batching import PromptBatch, batch_indices, derive_seed, make_prompts, shard


@dataclass
class MicroBatch:
    """One micro-batch of a step: images, label maps and the simulated prompts."""

    images: torch.Tensor
    labels: torch.Tensor
    prompts: PromptBatch

    @property
    def samples(self) -> int:
        """Images on this rank."""
        return int(self.images.shape[0])


def fetch(
    ds: Any, indices: list[int], seed: int, step: int, augment: bool
) -> tuple[torch.Tensor, torch.Tensor, list]:
    """The samples ``indices`` of step ``step`` (augmentation seeded per sample), stacked."""
    images, labels, seeds = [], [], []
    for i in indices:
        s = derive_seed("sample", seed, step, i)
        if augment and hasattr(ds, "set_random_state"):
            ds.set_random_state(s)
        item = ds[i]
        images.append(item["image"])
        labels.append(item["label"])
        seeds.append(s)
    return torch.stack(images), torch.stack(labels), seeds


class StepBatches(torch.utils.data.Dataset):
    """Item ``k``: the micro-batches of step ``first_step + k`` on this rank."""

    def __init__(
        self,
        ds: Any,
        tc: Any,  # TrainSection
        class_ids: list[int],
        augment: bool,
        rank: int,
        world_size: int,
        first_step: int,
    ) -> None:
        self.ds, self.tc, self.class_ids, self.augment = ds, tc, class_ids, augment
        self.rank, self.world_size, self.first_step = rank, world_size, first_step
        self.n = len(ds)

    def __len__(self) -> int:
        return max(0, self.tc.steps - self.first_step)

    def __getitem__(self, k: int) -> list[MicroBatch]:
        tc, step = self.tc, self.first_step + k
        global_idx = batch_indices(step, tc.batch_size * tc.grad_accum, self.n, tc.seed)
        out = []
        for micro in range(tc.grad_accum):
            chunk = global_idx[micro * tc.batch_size : (micro + 1) * tc.batch_size]
            idx = shard(chunk, self.rank, self.world_size)
            images, labels, seeds = fetch(self.ds, idx, tc.seed, step, self.augment)
            pb = make_prompts(
                labels, self.class_ids, tc.prompt, seeds, box_jitter=tc.box_jitter, n_points=tc.points
            )
            out.append(MicroBatch(images, labels, pb))
        return out


def _one_thread(_: int) -> None:
    """Each worker computes on one thread. The workers share the machine with the training process, and a forked
    worker inherits the parent's thread pools: on a 16-core GPU machine, 14 workers each running numpy's BLAS on
    16 threads put the load at 145 and made a step of batch 32 take 8 s (BENCHMARKS.md, "GPU pretraining")."""
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    threadpool_limits(1)  # BLAS and OpenMP pools of numpy and scipy


def step_batches(batches: StepBatches, num_workers: int) -> Generator[list[MicroBatch], None, None]:
    """The steps' micro-batches in order: made here (``num_workers`` 0) or by that many worker processes."""
    if num_workers <= 0:
        yield from (batches[k] for k in range(len(batches)))
        return
    loader = torch.utils.data.DataLoader(
        batches,
        batch_size=None,
        shuffle=False,
        num_workers=num_workers,
        prefetch_factor=4,
        worker_init_fn=_one_thread,
        collate_fn=_identity,
    )
    yield from loader


def _identity(x: Any) -> Any:
    return x
