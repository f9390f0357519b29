"""SAM variant registry.

``vit_b``/``vit_l``/``vit_h`` reproduce Meta's module shapes exactly, so official SAM and MedSAM checkpoints
load. ``tiny`` and ``small`` keep the same module structure (windowed ViT with relative positions, neck, prompt
encoder, two-way transformer decoder) at a width that trains on a laptop CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, TwoWayTransformer

from salt_seg.model.hires import HighResBranch
from salt_seg.model.sam import SamModel


@dataclass(frozen=True)
class VariantSpec:
    """Width/depth of one SAM variant. ``image_size`` is the native (pretraining) input size."""

    name: str
    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    global_attn_indexes: tuple[int, ...]
    image_size: int = 1024
    window_size: int = 14
    patch_size: int = 16
    prompt_embed_dim: int = 256
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_hidden_dim: int = 256
    mask_in_chans: int = 16
    description: str = ""


VARIANTS: dict[str, VariantSpec] = {
    "vit_b": VariantSpec("vit_b", 768, 12, 12, (2, 5, 8, 11), description="Meta SAM ViT-B (93.7M), MedSAM"),
    "vit_l": VariantSpec("vit_l", 1024, 24, 16, (5, 11, 17, 23), description="Meta SAM ViT-L (312M)"),
    "vit_h": VariantSpec("vit_h", 1280, 32, 16, (7, 15, 23, 31), description="Meta SAM ViT-H (641M)"),
    "tiny": VariantSpec(
        "tiny",
        192,
        4,
        4,
        (1, 3),
        image_size=256,
        window_size=8,
        prompt_embed_dim=128,
        decoder_mlp_dim=512,
        decoder_num_heads=4,
        iou_head_hidden_dim=128,
        mask_in_chans=8,
        description="SAM-architecture, 2.9M, for tests and CPU demos",
    ),
    "small": VariantSpec(
        "small",
        256,
        6,
        8,
        (2, 5),
        image_size=256,
        window_size=8,
        prompt_embed_dim=160,
        decoder_mlp_dim=640,
        decoder_num_heads=8,
        iou_head_hidden_dim=160,
        mask_in_chans=16,
        description="SAM-architecture, 6.4M, the CPU-trainable base",
    ),
}


def get_variant(name: str) -> VariantSpec:
    """Look a variant up by name.

    Raises:
        ValueError: unknown name (the message lists the valid ones).
    """
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown SAM variant {name!r}; valid: {sorted(VARIANTS)}") from None


def build_model(
    variant: str | VariantSpec, image_size: int | None = None, num_classes: int = 0, hires: bool = False
) -> SamModel:
    """Build an untrained model of a variant.

    Args:
        variant: registry name or a :class:`VariantSpec`.
        image_size: input side in pixels (defaults to the variant's native size). A multiple of the patch size;
            position embeddings are sized for it (load weights with
            :func:`salt_seg.model.checkpoint.load_weights`, which interpolates them).
        num_classes: number of learned class prompt tokens (prompt-free mode); 0 for none.
        hires: add the full-resolution mask branch (:class:`~salt_seg.model.hires.HighResBranch`), whose
            logits come at the input resolution instead of a quarter of it.

    Returns:
        The model in eval mode.
    """
    spec = get_variant(variant) if isinstance(variant, str) else variant
    size = int(image_size or spec.image_size)
    if size % spec.patch_size:
        raise ValueError(f"image_size must be a multiple of {spec.patch_size}, got {size}")
    grid = size // spec.patch_size
    encoder = ImageEncoderViT(
        depth=spec.encoder_depth,
        embed_dim=spec.encoder_embed_dim,
        img_size=size,
        mlp_ratio=4,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        num_heads=spec.encoder_num_heads,
        patch_size=spec.patch_size,
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=spec.global_attn_indexes,
        window_size=spec.window_size,
        out_chans=spec.prompt_embed_dim,
    )
    prompt_encoder = PromptEncoder(
        embed_dim=spec.prompt_embed_dim,
        image_embedding_size=(grid, grid),
        input_image_size=(size, size),
        mask_in_chans=spec.mask_in_chans,
    )
    decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(
            depth=2,
            embedding_dim=spec.prompt_embed_dim,
            mlp_dim=spec.decoder_mlp_dim,
            num_heads=spec.decoder_num_heads,
        ),
        transformer_dim=spec.prompt_embed_dim,
        iou_head_depth=3,
        iou_head_hidden_dim=spec.iou_head_hidden_dim,
    )
    branch = (
        HighResBranch(spec.encoder_embed_dim, spec.prompt_embed_dim, spec.global_attn_indexes[0])
        if hires
        else None
    )
    model = SamModel(
        encoder, prompt_encoder, decoder, num_classes=num_classes, variant=spec.name, hires=branch
    )
    return model.eval()
