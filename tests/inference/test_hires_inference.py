"""Inference with the full-resolution branch: a run trained with a fresh branch on a base without one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from salt_seg.data import Volume, prepare_volume
from salt_seg.inference import ModelBackend, load_inference_model, segment_volume
from salt_seg.model.predictor import Predictor
from salt_seg.preprocessing import Preprocessing
from salt_seg.prompts import Prompt
from tests.inference.conftest import S, ras_affine


@pytest.fixture(scope="module")
def hires_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A SALT run whose adapter file carries a trained branch; its base (saved without one) has none."""
    from safetensors.torch import save_file

    from salt_seg.adapters import AdapterConfig, inject_adapters, save_adapter
    from salt_seg.model import build_model
    from salt_seg.model.checkpoint import state_dict_hash

    run = tmp_path_factory.mktemp("hires_run")
    record = Preprocessing(intensity="minmax", image_size=S, classes={1: "a", 2: "b"}, prompt_mode="mixed")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        model = build_model("tiny", image_size=S, num_classes=2, hires=True)
        base = {
            k: v.clone()
            for k, v in model.state_dict().items()
            if not k.startswith(("class_tokens.", "hires."))
        }
        save_file(base, str(run / "base.safetensors"))
        config = AdapterConfig(name="salt", train_class_tokens=True)
        inject_adapters(model, config, base_hash=state_dict_hash(base), svd_cache=False, progress=False)
        with torch.no_grad():  # a trained-looking branch: its residual is no longer zero
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(0.05 * torch.randn_like(p))
    save_adapter(
        run / "adapter.safetensors",
        model,
        config,
        base_variant="tiny",
        base_hash=state_dict_hash(base),
        preprocessing=record,
        class_names=record.classes,
        extra={"base_variant": "tiny", "base_checkpoint": "run:base.safetensors", "step": 1},
    )
    (run / "config.yaml").write_text("model: {variant: tiny}\n")
    return run, {k: v.detach().clone() for k, v in model.hires.state_dict().items()}


def test_the_loader_rebuilds_the_branch_from_the_adapter(hires_run) -> None:
    run, trained = hires_run
    loaded = load_inference_model(run)
    assert loaded.model.hires is not None and loaded.model.output_size == S
    for k, v in loaded.model.hires.state_dict().items():
        assert torch.equal(v, trained[k])


@torch.no_grad()
def test_predict_paths_answer_at_the_slice_resolution_and_agree(hires_run) -> None:
    run, _ = hires_run
    loaded = load_inference_model(run)
    rng = np.random.default_rng(0)
    data = rng.random((40, 52, 6)).astype(np.float32)
    vol = Volume(data, ras_affine(), "hires.nii.gz")
    prepared = prepare_volume(vol, loaded.record)
    prompt = Prompt(box=(5.0, 8.0, 30.0, 35.0), class_id=1, slice_index=2, axis=2)
    backend_out = ModelBackend(loaded.model, prepared, batch_size=3).decode([(2, prompt)])[0]
    from salt_seg.inference.backend import PredictorBackend

    predictor = Predictor(loaded.model, loaded.record)
    predictor_out = PredictorBackend(predictor, prepared).decode([(2, prompt)])[0]
    assert backend_out.probabilities.shape == prepared.slice_image(2).shape[-2:]
    np.testing.assert_allclose(backend_out.probabilities, predictor_out.probabilities, atol=1e-5)
    res = segment_volume(loaded.model, loaded.record, prepared, mode="auto", batch_size=4)
    assert prepared.to_source(res.label_map).shape == data.shape
