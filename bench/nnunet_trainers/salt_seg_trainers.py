"""nnU-Net trainers without mirroring at the short lengths this project runs on a CPU.

nnU-Net mirrors every axis in training and at test time (TTA) by default. Where a dataset's classes come in left/
right pairs (``hippocampus_L`` / ``hippocampus_R``) a mirrored slice shows the left structure where the right one
lies under the left label, so the network learns that the two sides are one class. nnU-Net ships
``nnUNetTrainerNoMirroring`` (1,000 epochs) and a few long ``..._NoMirroring`` lengths; these are the same change
at 1-250 epochs. ``bench/nnunet_baseline.py --mirroring off`` (``auto`` where the class names pair) points nnU-Net's
``nnUNet_extTrainer`` at this folder, where nnU-Net's own trainer lookup finds them by name.
"""

from __future__ import annotations

import torch
from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoMirroring import (
    nnUNetTrainerNoMirroring,
)

LENGTHS = (1, 5, 10, 20, 50, 100, 250)


def _with_epochs(n: int) -> type:
    # nnU-Net's own signature, parameter for parameter: its trainer records its init arguments by these names
    def __init__(  # noqa: PLR0913
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = torch.device("cuda"),  # noqa: B008 - nnU-Net's default
    ) -> None:
        nnUNetTrainerNoMirroring.__init__(self, plans, configuration, fold, dataset_json, device)
        self.num_epochs = n

    name = f"nnUNetTrainer_{n}epoch{'' if n == 1 else 's'}_NoMirroring"
    return type(name, (nnUNetTrainerNoMirroring,), {"__init__": __init__, "__module__": __name__})


for _n in LENGTHS:
    _cls = _with_epochs(_n)
    globals()[_cls.__name__] = _cls
