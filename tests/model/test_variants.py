from __future__ import annotations

import pytest
import torch

from salt_seg.commands.common import VARIANT_NAMES
from salt_seg.model import VARIANTS, build_model, get_variant


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_vit_b_parameter_counts_match_meta() -> None:
    m = build_model("vit_b")
    assert count(m.image_encoder) == 89_670_912
    assert count(m) == 93_735_472


@pytest.mark.parametrize(
    ("name", "lo", "hi"), [("tiny", 2_000_000, 3_000_000), ("small", 5_500_000, 7_000_000)]
)
def test_small_variants_have_expected_size_and_sam_structure(name: str, lo: int, hi: int) -> None:
    m = build_model(name)
    assert lo <= count(m) <= hi
    spec = get_variant(name)
    assert m.image_size == spec.image_size == 256
    # same module structure as Meta's SAM: windowed + global blocks with relative positions, neck, decoder
    blocks = m.image_encoder.blocks
    assert len(blocks) == spec.encoder_depth
    assert all(b.attn.use_rel_pos for b in blocks)
    assert [i for i, b in enumerate(blocks) if b.window_size == 0] == list(spec.global_attn_indexes)
    assert count(m.mask_decoder) < 4_058_340  # narrower than SAM's 256-wide decoder


@pytest.mark.parametrize("name", ["vit_l", "vit_h"])
def test_large_variants_build_with_meta_shapes(name: str) -> None:
    with torch.device("meta"):
        m = build_model(name)
    spec = VARIANTS[name]
    assert m.image_encoder.patch_embed.proj.weight.shape == (spec.encoder_embed_dim, 3, 16, 16)
    assert len(m.image_encoder.blocks) == spec.encoder_depth
    assert m.image_encoder.pos_embed.shape == (1, 64, 64, spec.encoder_embed_dim)
    assert m.image_encoder.blocks[0].attn.rel_pos_h.shape == (27, spec.encoder_embed_dim // 16)


def test_unknown_variant_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="valid: .*tiny.*vit_b"):
        get_variant("vit_x")


def test_cli_variant_choices_match_registry() -> None:
    assert sorted(VARIANT_NAMES) == sorted(VARIANTS)


def test_tiny_runs_at_native_size(tiny_model) -> None:
    from salt_seg.model.sam import InputPrompt

    x = torch.randn(1, 3, 256, 256)
    logits, iou = tiny_model(x, [InputPrompt(box=torch.tensor([40.0, 50.0, 120.0, 160.0]))])
    assert logits.shape == (1, 1, 64, 64)
    assert iou.shape == (1, 1)
    assert torch.isfinite(logits).all()
