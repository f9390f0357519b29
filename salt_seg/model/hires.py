"""A full-resolution mask branch for SAM, in the spirit of HQ-SAM (Ke et al., NeurIPS 2023).

SAM's mask decoder answers on a grid a quarter of the input side (64 x 64 for a 256 px input): a structure a few
pixels thick cannot be drawn there, whatever the training. :class:`HighResBranch` adds

* an extra output token (the *HQ token*) that goes through SAM's two-way transformer with the other output
  tokens, and its own hypernetwork MLP;
* a fusion, at ``S/4``, of SAM's upscaled decoder features with early ViT features (the output of the first
  global-attention block) and the final image embedding, as HQ-SAM does;
* a shallow convolutional stem on the input slice, at ``S`` (edges) and ``S/2`` (context); the fused features
  meet the ``S/2`` stem through one non-linearity at half resolution, and the ``S`` stem enters linearly through
  the prompt's weights, so that the per-prompt work at full resolution is a single-channel dot product;

and predicts ``S x S`` logits as ``upsample(SAM's own logits) + HQ residual`` (:meth:`HighResBranch.logits`). The residual's hypernetwork ends
in a zero-initialised layer, so a fresh branch starts from SAM's (upsampled) answer and only learns the detail.

Everything that depends on the image alone (early features, embedding features, stem) is computed once per
image by :meth:`HighResBranch.image_features` and travels with the embedding in :class:`ImageFeatures`, so an
interactive click costs only the per-prompt part.

A model without the branch (Meta's and MedSAM's checkpoints, the v1 built-in bases) behaves exactly as before:
the branch is simply absent and :meth:`~salt_seg.model.sam.SamModel.encode_images` returns a plain tensor.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.mask_decoder import MLP
from torch import nn

#: state-dict prefix of the branch inside a :class:`~salt_seg.model.sam.SamModel`
HIRES_PREFIX = "hires."


@dataclass
class ImageFeatures:
    """What the encoder computes once per image when the model has a full-resolution branch.

    Behaves like the batch of embeddings it replaces where the rest of the code uses one: ``len``, indexing and
    slicing along the batch, ``index_select``, iteration over images, ``.to``, ``shape``/``device`` of the
    embedding, and :meth:`stack`.

    Attributes:
        embedding: ``B x D x h x w`` SAM image embedding (``h = S/16``).
        early: ``B x c x S/4 x S/4`` compressed early-ViT plus embedding features (prompt independent).
        stem: ``N x c/2 x S x S`` convolutional stem features of the input slices (full resolution, before the
            branch's 1x1 projection, which is folded into each prompt's weights).
        half: ``N x c x S/2 x S/2`` the stem's strided (wider-context) features.
        stem_rows: ``B`` row of :attr:`stem` / :attr:`half` for each batch row, or ``None`` when row ``i`` is
            row ``i``.
            :meth:`index_select` (one row per prompt) only records rows instead of copying the largest tensor
            once per prompt.
    """

    embedding: torch.Tensor
    early: torch.Tensor
    stem: torch.Tensor
    half: torch.Tensor
    stem_rows: torch.Tensor | None = None

    @property
    def shape(self) -> torch.Size:
        return self.embedding.shape

    @property
    def device(self) -> torch.device:
        return self.embedding.device

    def __len__(self) -> int:
        return int(self.embedding.shape[0])

    def _rows(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.stem_rows is None else t.index_select(0, self.stem_rows)

    def __getitem__(self, index: int | slice) -> ImageFeatures:
        """An int drops the batch axis (as indexing a tensor does), a slice keeps it."""
        return ImageFeatures(
            self.embedding[index],
            self.early[index],
            self._rows(self.stem)[index],
            self._rows(self.half)[index],
        )

    def __iter__(self) -> Iterator[ImageFeatures]:
        return (self[i] for i in range(len(self)))

    def index_select(self, dim: int, index: torch.Tensor) -> ImageFeatures:
        if dim != 0:
            raise ValueError("ImageFeatures are indexed along the batch axis only")
        rows = index if self.stem_rows is None else self.stem_rows.index_select(0, index)
        return ImageFeatures(
            self.embedding.index_select(0, index),
            self.early.index_select(0, index),
            self.stem,
            self.half,
            rows,
        )

    def to(self, *args, **kwargs) -> ImageFeatures:
        embedding, early, stem, half = (
            t.to(*args, **kwargs) for t in (self.embedding, self.early, self.stem, self.half)
        )
        rows = None if self.stem_rows is None else self.stem_rows.to(stem.device)
        return ImageFeatures(embedding, early, stem, half, stem_rows=rows)

    def cpu(self) -> ImageFeatures:
        return self.to("cpu")

    def project(self, weights: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """``P x c`` weights (row ``i`` for batch row ``i``) dotted with each row's :attr:`stem` or :attr:`half`
        (``features``): ``P x H x W``. One matrix product per distinct slice, never a copy per row."""
        c, h, w = features.shape[1:]
        if self.stem_rows is None:
            return torch.einsum("pc,pchw->phw", weights, features)
        parts, order = [], []
        for u in torch.unique(self.stem_rows).tolist():
            sel = (self.stem_rows == u).nonzero(as_tuple=True)[0]
            parts.append((weights.index_select(0, sel) @ features[u].reshape(c, h * w)).reshape(-1, h, w))
            order.append(sel)
        return torch.cat(parts).index_select(0, torch.argsort(torch.cat(order)))

    @staticmethod
    def stack(items: Sequence[ImageFeatures]) -> ImageFeatures:
        """Stack per-image features (each without a batch axis) into a batch."""
        return ImageFeatures(
            torch.stack([f.embedding for f in items]),
            torch.stack([f.early for f in items]),
            torch.stack([f.stem for f in items]),
            torch.stack([f.half for f in items]),
        )


def stack_embeddings(items: Sequence[torch.Tensor | ImageFeatures]) -> torch.Tensor | ImageFeatures:
    """``torch.stack`` for per-image embeddings, whether plain tensors or :class:`ImageFeatures`."""
    if items and isinstance(items[0], ImageFeatures):
        return ImageFeatures.stack(items)  # type: ignore[arg-type]
    return torch.stack(list(items))  # type: ignore[arg-type]


class HighResBranch(nn.Module):
    """The full-resolution branch (see the module docstring).

    Args:
        encoder_dim: width of the ViT blocks (``D_enc``).
        transformer_dim: width of the mask decoder (SAM's ``prompt_embed_dim``).
        early_block: index of the ViT block whose output is fused (the first global-attention block).
    """

    def __init__(self, encoder_dim: int, transformer_dim: int, early_block: int) -> None:
        super().__init__()
        c = transformer_dim // 8  # the channel width of SAM's upscaled decoder features
        self.early_block = int(early_block)
        self.channels = c
        self.hq_token = nn.Embedding(1, transformer_dim)
        # two weight vectors per prompt: one for the fused half-resolution features, one for the full-res stem
        self.hq_mlp = MLP(transformer_dim, transformer_dim, 2 * c, 3)
        self.compress_vit = nn.Sequential(
            nn.ConvTranspose2d(encoder_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(transformer_dim // 4, c, kernel_size=2, stride=2),
        )
        self.embedding_encoder = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(transformer_dim // 4, c, kernel_size=2, stride=2),
        )
        # per prompt, so pointwise: a 3x3 convolution here would cost more than the rest of a click
        self.mask_feature = nn.Sequential(nn.Conv2d(c, c, 1), LayerNorm2d(c), nn.GELU(), nn.Conv2d(c, c, 1))
        # the stem: a narrow 3x3 convolution at full resolution (edges), a strided one for context
        self.stem_full = nn.Sequential(nn.Conv2d(3, c // 2, 3, padding=1), nn.GELU())
        self.stem_half = nn.Sequential(nn.Conv2d(c // 2, c, 3, stride=2, padding=1), nn.GELU())
        self.stem_proj = nn.Conv2d(c // 2, c, 1)
        with torch.no_grad():  # a fresh branch answers exactly SAM's upsampled logits
            nn.init.zeros_(self.hq_mlp.layers[-1].weight)
            nn.init.zeros_(self.hq_mlp.layers[-1].bias)

    def image_features(
        self, images: torch.Tensor, early: torch.Tensor, embedding: torch.Tensor
    ) -> ImageFeatures:
        """Prompt-independent features.

        Args:
            images: ``B x 3 x S x S`` model input.
            early: ``B x h x w x D_enc`` output of block :attr:`early_block`.
            embedding: ``B x D x h x w`` final image embedding.
        """
        fused = self.compress_vit(early.permute(0, 3, 1, 2)) + self.embedding_encoder(embedding)
        s1 = self.stem_full(images)
        # the stem is cached before its 1x1 projection: the projection is folded into each prompt's weights
        return ImageFeatures(embedding, fused, s1, self.stem_half(s1))

    def logits(
        self,
        sam_logits: torch.Tensor,
        token_out: torch.Tensor,
        upscaled: torch.Tensor,
        features: ImageFeatures,
    ) -> torch.Tensor:
        """Full-resolution logits: SAM's own plus the HQ residual.

        Args:
            sam_logits: ``P x M x S/4 x S/4`` SAM's mask logits.
            token_out: ``P x D`` the HQ token after the two-way transformer.
            upscaled: ``P x c x S/4 x S/4`` SAM's upscaled decoder features for each prompt.
            features: the prompts' images' features (row ``i`` belongs to prompt ``i``).

        Returns:
            ``P x M x S x S`` logits: ``up(SAM) + up(w1 . GELU(up(hq) + half)) + w2 . stem`` with ``w1, w2`` the
            HQ token's hypernetwork output. The non-linear fusion runs at half resolution; at full resolution the
            per-prompt work is a single-channel dot product with the cached stem.
        """
        c = self.channels
        hq = self.mask_feature(upscaled) + features.early  # P x c x S/4 x S/4
        weights = self.hq_mlp(token_out)  # P x 2c
        half_size = features.half.shape[-2:]
        rows = features.stem_rows
        half = features.half if rows is None else features.half.index_select(0, rows)
        # the one non-linear fusion of prompt context and local image features, at half resolution
        fused = F.gelu(F.interpolate(hq, size=half_size, mode="bilinear", align_corners=False) + half)
        mid = torch.einsum("pc,pchw->phw", weights[:, :c], fused)[:, None]
        size = features.stem.shape[-2:]
        up = F.interpolate(sam_logits, size=size, mode="bilinear", align_corners=False)
        up = up + F.interpolate(mid, size=size, mode="bilinear", align_corners=False)
        # full resolution: the prompt's weights on the cached stem, single-channel work per prompt
        # w2 . (A s1 + b) == (A^T w2) . s1 + w2 . b: the stem's 1x1 projection folded into the weights
        proj = self.stem_proj.weight[:, :, 0, 0]  # c x c/2
        w_full = weights[:, c:] @ proj
        bias = (weights[:, c:] @ self.stem_proj.bias)[:, None, None, None]
        return up + features.project(w_full, features.stem)[:, None] + bias
