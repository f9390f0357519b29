"""The demo behind the README's main command.

Status: the full few-shot demo (prepare a real dataset, train SALT from the built-in base, evaluate, export NIfTI,
report) lands with the demo issue. Until then this says so and runs an honest smoke check of what exists: it
builds the ``tiny`` SAM-architecture model with random weights, saves it, inspects the file and segments a
synthetic slice from a box prompt. Random weights produce a meaningless mask; the point is that the pipeline runs.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    print("salt_seg demo (preliminary): the few-shot training demo is not built yet.")
    print("Running a smoke check of the model core instead: build -> save -> inspect -> prompt a slice.\n")
    import numpy as np
    import torch

    from salt_seg.commands.inspect import inspect_file
    from salt_seg.model import build_model
    from salt_seg.model.predictor import Predictor
    from salt_seg.preprocessing import Preprocessing
    from salt_seg.prompts import Prompt

    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = build_model("tiny")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "tiny_random.pth"
        torch.save(model.state_dict(), path)
        info = inspect_file(str(path))
    print(
        f"1. built and saved the 'tiny' variant: {info['num_parameters']:,} parameters, "
        f"detected as {info['variant']!r}, loads={info['loads']}"
    )
    img = np.zeros((200, 240), dtype=np.float32)
    img[60:140, 80:180] = 1.0
    pred = Predictor(model, Preprocessing(image_size=256))
    pred.set_image(img)
    out = pred.predict(Prompt(box=(80, 60, 179, 139)))
    print(
        f"2. box prompt on a synthetic 200x240 slice -> mask {out.mask.shape}, "
        f"{int(out.mask.sum())} pixels (random weights: the mask is not meaningful)"
    )
    print(f"\nDone in {time.perf_counter() - t0:.1f} s. See README.md for what works today.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
