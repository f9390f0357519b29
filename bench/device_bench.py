"""The prepared GPU benchmark (issue 16, item 4): what ``bash bench/device.sh`` runs.

On a CUDA device (default): ViT-B at 1024 px, batch 2, bf16 autocast and gradient checkpointing --

* **training step** (forward through encoder and decoder with one box per image, Dice-free BCE loss, backward,
  AdamW step) time and peak CUDA memory for SALT at the released ranks (r_lora 4), LoRA r = 4 on qkv, full
  fine-tuning, and full fine-tuning with the GaLore and Q-GaLore optimizers (``train.optimizer``, defaults);
* **predict throughput**: ``segment_volume`` (auto mode, merged weights, ``--precision``) on a synthetic volume;
* **click latency**: :class:`~salt_seg.model.predictor.Predictor` point clicks on an embedded slice.

``--cpu-tiny`` runs the same code on the CPU with the ``tiny`` variant at 64 px and a couple of steps, so the suite
knows the script works (``tests/bench/test_device_bench.py``). Results print as JSON (and ``--json FILE``), with the
device's name.

    bash bench/device.sh                      # on the GPU machine: one command, a few minutes
    bash bench/device.sh --cpu-tiny           # anywhere: a smoke run in seconds
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from salt_seg.io import atomic_write_json

ADAPTERS = ("salt", "lora_r4", "full", "galore", "q-galore")
#: full fine-tuning with a low-memory optimizer instead of AdamW (issue 18)
OPTIMIZERS = {"galore": "GaLoreAdamW", "q-galore": "QGaLoreAdamW"}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _adapter_config(name: str):  # -> AdapterConfig
    from salt_seg.adapters import AdapterConfig

    if name == "salt":
        return AdapterConfig(name="salt", r_lora=4, train_class_tokens=False)
    if name == "lora_r4":
        return AdapterConfig(
            name="lora", r_lora=4, targets=["image_encoder.blocks.*.attn.qkv"], train_class_tokens=False
        )
    if name == "full" or name in OPTIMIZERS:
        return AdapterConfig(name="full", train_class_tokens=False)
    raise ValueError(f"unknown benchmark row {name!r}")


def _optimizer(name: str, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if name == "galore":
        from salt_seg.training.galore import GaLoreAdamW

        return GaLoreAdamW(params, lr=1e-4, weight_decay=1e-2)
    if name == "q-galore":
        from salt_seg.training.qgalore import QGaLoreAdamW

        return QGaLoreAdamW(params, lr=1e-4, weight_decay=1e-2)
    return torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-2)


def _model(args: argparse.Namespace, num_classes: int = 0):
    from salt_seg.model import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build_model(args.variant, image_size=args.image_size, num_classes=num_classes)


def train_steps(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    from salt_seg.adapters import inject_adapters
    from salt_seg.adapters import trainable_parameters as adapter_trainable
    from salt_seg.model.precision import autocast
    from salt_seg.model.sam import InputPrompt
    from salt_seg.training.galore import optimizer_state_bytes
    from salt_seg.training.memory import enable_grad_checkpointing

    s = args.image_size
    out: dict[str, Any] = {}
    for name in ADAPTERS:
        config = _adapter_config(name)
        model = _model(args)
        inject_adapters(model, config, svd_cache=False, progress=False)
        if args.checkpointing:
            enable_grad_checkpointing(model)
        model = model.to(device).train()
        params = adapter_trainable(model)
        opt = _optimizer(name, params)
        gen = torch.Generator().manual_seed(0)
        images = torch.randn(args.batch, 3, s, s, generator=gen).to(device)
        target = (
            torch.rand(args.batch, 1, model.output_size, model.output_size, generator=gen) > 0.5
        ).float()
        target = target.to(device)
        box = torch.tensor([0.2 * s, 0.2 * s, 0.7 * s, 0.8 * s])
        prompts = [InputPrompt(box=box) for _ in range(args.batch)]

        def step(model=model, opt=opt, images=images, target=target, prompts=prompts) -> None:
            opt.zero_grad(set_to_none=True)
            with autocast(args.precision, device):
                logits, _ = model(images, prompts)
            F.binary_cross_entropy_with_logits(logits.float(), target).backward()
            opt.step()

        step()  # warm-up (allocator, kernels)
        _sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        for _ in range(args.steps):
            t = time.perf_counter()
            step()
            _sync(device)
            times.append(time.perf_counter() - t)
        out[name] = {
            "status": "ok",
            "trainable_params": int(sum(p.numel() for p in params)),
            "step_s_median": round(statistics.median(times), 4),
            "step_s_all": [round(t, 4) for t in times],
            "optimizer_state_mib": round(optimizer_state_bytes(opt) / 2**20, 2),
            "peak_mem_mib": round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
            if device.type == "cuda"
            else None,
        }
        del model, opt, params, step
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    base = out.get("lora_r4", {}).get("step_s_median")
    for v in out.values():
        if base and v.get("status") == "ok":
            v["vs_lora_r4"] = round(v["step_s_median"] / base, 3)
    return out


def predict_and_click(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    from salt_seg.data import Volume, prepare_volume
    from salt_seg.inference import segment_volume
    from salt_seg.model.predictor import Predictor
    from salt_seg.preprocessing import Preprocessing
    from salt_seg.prompts import Prompt

    model = _model(args, num_classes=2).to(device).eval()
    record = Preprocessing(intensity="minmax", image_size=args.image_size, classes={1: "a", 2: "b"})
    rng = np.random.default_rng(0)
    side = args.side
    image = rng.normal(size=(side, side, args.slices)).astype(np.float32)
    prepared = prepare_volume(Volume(image, np.diag([0.8, 0.8, 1.5, 1.0])), record)
    kw = dict(mode="auto", batch_size=args.predict_batch, precision=args.precision)
    segment_volume(model, record, prepared, **kw)  # warm-up
    _sync(device)
    t = time.perf_counter()
    segment_volume(model, record, prepared, **kw)
    _sync(device)
    volume_s = time.perf_counter() - t
    predictor = Predictor(model, record, device=device, precision=args.precision)
    predictor.set_image(image[:, :, 0], "k")
    clicks = []
    for i in range(args.clicks + 1):
        click = Prompt(points=[(side * (0.3 + 0.4 * (i % 5) / 5), side * 0.5)], point_labels=[1])
        _sync(device)
        t = time.perf_counter()
        predictor.predict(click)
        _sync(device)
        if i:  # the first click warms up
            clicks.append(time.perf_counter() - t)
    return {
        "volume": [side, side, args.slices],
        "predict_s": round(volume_s, 3),
        "predict_slices_per_s": round(args.slices / volume_s, 2),
        "click_ms_median": round(1000 * statistics.median(clicks), 2),
        "click_ms_all": [round(1000 * c, 2) for c in clicks],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu-tiny", action="store_true", help="CPU smoke run: tiny variant, 64 px, few steps")
    p.add_argument("--variant", default="vit_b")
    p.add_argument("--image-size", type=int, default=1024)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument(
        "--steps", type=int, default=5, help="timed training steps per adapter (after one warm-up)"
    )
    p.add_argument("--precision", default=None, help="fp32, bf16 or fp16 (default bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--no-checkpointing", dest="checkpointing", action="store_false")
    p.add_argument("--slices", type=int, default=64, help="slices of the predicted volume")
    p.add_argument("--side", type=int, default=512, help="side of the predicted volume's slices")
    p.add_argument("--predict-batch", type=int, default=8)
    p.add_argument("--clicks", type=int, default=20)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args(argv)
    if args.cpu_tiny:
        args.variant, args.image_size, args.batch, args.steps = "tiny", 64, 1, 2
        args.slices, args.side, args.clicks, args.device = 3, 48, 3, "cpu"
        torch.set_num_threads(1)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    if args.precision is None:
        args.precision = "bf16" if device.type == "cuda" else "fp32"
    from salt_seg.model.precision import check_precision

    check_precision(args.precision, device)
    t0 = time.perf_counter()
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "variant": args.variant,
        "image_size": args.image_size,
        "batch": args.batch,
        "precision": args.precision,
        "grad_checkpointing": args.checkpointing,
        "train": train_steps(args, device),
        "inference": predict_and_click(args, device),
    }
    result["total_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result, indent=2))
    if args.json:
        atomic_write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)
