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
from typing import cast

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
            branch's 1x1 projection, which is folded into each prompt's weights), or a tuple of ``N`` per-slice
            ``c/2 x S x S`` tensors (what :meth:`stack` keeps without autograd, instead of copying the largest
            tensor into a batch; :meth:`stem_of` reads either).
        half: ``N x c x S/2 x S/2`` the stem's strided (wider-context) features (a tuple like :attr:`stem`).
        stem_rows: ``B`` row of :attr:`stem` / :attr:`half` for each batch row, or ``None`` when row ``i`` is
            row ``i``.
            :meth:`index_select` (one row per prompt) only records rows instead of copying the largest tensor
            once per prompt.
    """

    embedding: torch.Tensor
    early: torch.Tensor
    stem: torch.Tensor | tuple[torch.Tensor, ...]
    half: torch.Tensor | tuple[torch.Tensor, ...]
    stem_rows: torch.Tensor | None = None

    def stem_of(self, row: int) -> torch.Tensor:
        """``c/2 x S x S`` stem of :attr:`stem`'s row ``row`` (not a batch row: see :attr:`stem_rows`)."""
        return self.stem[row]

    def half_of(self, row: int) -> torch.Tensor:
        """``c x S/2 x S/2`` strided stem features of :attr:`half`'s row ``row``."""
        return self.half[row]

    def batched(self) -> ImageFeatures:
        """The same features with :attr:`stem` and :attr:`half` as batch tensors (stacking per-slice tuples)."""
        if isinstance(self.stem, torch.Tensor) and isinstance(self.half, torch.Tensor):
            return self
        return ImageFeatures(self.embedding, self.early, _full(self.stem), _full(self.half), self.stem_rows)

    @property
    def shape(self) -> torch.Size:
        return self.embedding.shape

    @property
    def device(self) -> torch.device:
        return self.embedding.device

    def __len__(self) -> int:
        return int(self.embedding.shape[0])

    def _rows(self, t: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if self.stem_rows is None:
            return t
        if isinstance(t, tuple):
            return tuple(t[int(r)] for r in self.stem_rows)
        return t.index_select(0, self.stem_rows)

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
        def move(t: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor | tuple[torch.Tensor, ...]:
            return tuple(x.to(*args, **kwargs) for x in t) if isinstance(t, tuple) else t.to(*args, **kwargs)

        emb = self.embedding.to(*args, **kwargs)
        rows = None if self.stem_rows is None else self.stem_rows.to(emb.device)
        return ImageFeatures(emb, self.early.to(*args, **kwargs), move(self.stem), move(self.half), rows)

    def cpu(self) -> ImageFeatures:
        return self.to("cpu")

    def project(self, weights: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """``P x c`` weights (row ``i`` for batch row ``i``) dotted with each row's :attr:`stem` or :attr:`half`
        (``features``): ``P x H x W``. One matrix product per distinct slice, never a copy per row."""
        c, h, w = features.shape[1:]
        if self.stem_rows is None:
            return torch.einsum("pc,pchw->phw", weights, _full(features))
        parts, order = [], []
        for u, sel in self.groups():
            parts.append((weights.index_select(0, sel) @ features[u].reshape(c, h * w)).reshape(-1, h, w))
            order.append(sel)
        return torch.cat(parts).index_select(0, torch.argsort(torch.cat(order)))

    def groups(self) -> list[tuple[int, torch.Tensor]]:
        """``(slice row, the batch rows on it)`` for every distinct slice of :attr:`stem_rows`."""
        assert self.stem_rows is not None
        return [
            (u, (self.stem_rows == u).nonzero(as_tuple=True)[0])
            for u in torch.unique(self.stem_rows).tolist()
        ]

    @staticmethod
    def stack(items: Sequence[ImageFeatures]) -> ImageFeatures:
        """Stack per-image features (each without a batch axis) into a batch.

        Without autograd the full- and half-resolution stems stay per-slice tuples (no copy): the inference path
        reads them slice by slice.
        """
        stems, halves = [f.stem for f in items], [f.half for f in items]
        if torch.is_grad_enabled():
            stem: torch.Tensor | tuple[torch.Tensor, ...] = torch.stack(stems)  # type: ignore[arg-type]
            half: torch.Tensor | tuple[torch.Tensor, ...] = torch.stack(halves)  # type: ignore[arg-type]
        else:
            stem, half = tuple(stems), tuple(halves)  # type: ignore[arg-type]
        return ImageFeatures(
            torch.stack([f.embedding for f in items]), torch.stack([f.early for f in items]), stem, half
        )


def _full(t: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
    return torch.stack(t) if isinstance(t, tuple) else t


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
        if torch.is_grad_enabled():
            s1 = self.stem_full(images)
            # the stem is cached before its 1x1 projection: the projection is folded into each prompt's weights
            return ImageFeatures(embedding, fused, s1, self.stem_half(s1))
        # inference: the same numbers (to float rounding), faster. The 3-channel convolution is ~6x faster
        # channels-last on CPU, and the activations run in place (large fresh temporaries cost page faults)
        cl = torch.channels_last
        conv_full = cast(nn.Conv2d, self.stem_full[0])
        conv_half = cast(nn.Conv2d, self.stem_half[0])
        s1 = F.conv2d(
            images.contiguous(memory_format=cl),
            conv_full.weight.contiguous(memory_format=cl),
            conv_full.bias,
            padding=cast(tuple[int, int], conv_full.padding),
        )
        torch.ops.aten.gelu_(s1)
        half = F.conv2d(
            s1,
            conv_half.weight.contiguous(memory_format=cl),
            conv_half.bias,
            stride=conv_half.stride,
            padding=cast(tuple[int, int], conv_half.padding),
        )
        torch.ops.aten.gelu_(half)
        return ImageFeatures(embedding, fused, s1, half)

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
        if not torch.is_grad_enabled():
            return self._logits_inference(sam_logits, token_out, upscaled, features)
        stem, half_all = _full(features.stem), _full(features.half)
        c = self.channels
        hq = self.mask_feature(upscaled) + features.early  # P x c x S/4 x S/4
        weights = self.hq_mlp(token_out)  # P x 2c
        half_size = half_all.shape[-2:]
        rows = features.stem_rows
        half = half_all if rows is None else half_all.index_select(0, rows)
        # the one non-linear fusion of prompt context and local image features, at half resolution
        fused = F.gelu(F.interpolate(hq, size=half_size, mode="bilinear", align_corners=False) + half)
        mid = torch.einsum("pc,pchw->phw", weights[:, :c], fused)[:, None]
        size = stem.shape[-2:]
        up = F.interpolate(sam_logits, size=size, mode="bilinear", align_corners=False)
        up = up + F.interpolate(mid, size=size, mode="bilinear", align_corners=False)
        # full resolution: the prompt's weights on the cached stem, single-channel work per prompt
        # w2 . (A s1 + b) == (A^T w2) . s1 + w2 . b: the stem's 1x1 projection folded into the weights
        proj = self.stem_proj.weight[:, :, 0, 0]  # c x c/2
        w_full = weights[:, c:] @ proj
        bias = (weights[:, c:] @ self.stem_proj.bias)[:, None, None, None]
        return up + features.project(w_full, stem)[:, None] + bias

    def _logits_inference(
        self,
        sam_logits: torch.Tensor,
        token_out: torch.Tensor,
        upscaled: torch.Tensor,
        features: ImageFeatures,
    ) -> torch.Tensor:
        """:meth:`logits` without autograd: the same sum, evaluated with fewer and cheaper passes over memory.

        Per-prompt features are kept channels-last (``P x h x w x c``), so the pointwise convolutions are matrix
        products and the layer norm is one fused kernel; the half features are added per slice instead of being
        gathered once per prompt; activations run in place; the per-prompt bias is added at ``S/4`` before the
        upsampling (bilinear weights sum to one) and the full-resolution terms are accumulated into one buffer.
        Equal to :meth:`logits` to float rounding (tested).
        """
        c = self.channels
        conv1, conv2 = cast(nn.Conv2d, self.mask_feature[0]), cast(nn.Conv2d, self.mask_feature[3])
        norm = cast(LayerNorm2d, self.mask_feature[1])
        x = F.linear(upscaled.permute(0, 2, 3, 1), conv1.weight[:, :, 0, 0], conv1.bias)  # P x h x w x c
        x = F.layer_norm(x, (c,), norm.weight, norm.bias, float(norm.eps))
        torch.ops.aten.gelu_(x)
        x = F.linear(x, conv2.weight[:, :, 0, 0], conv2.bias)
        hq = x.permute(0, 3, 1, 2)  # P x c x h x w, channels-last in memory
        hq.add_(features.early)
        weights = self.hq_mlp(token_out)
        w_mid = weights[:, :c]
        # the stem's 1x1 projection folded into the prompt's weights, its bias into SAM's logits at S/4
        w_stem = weights[:, c:] @ self.stem_proj.weight[:, :, 0, 0]
        low = sam_logits + (weights[:, c:] @ self.stem_proj.bias)[:, None, None, None]
        p, m = low.shape[:2]
        half_size = features.half_of(0).shape[-2:]
        _, h, w = features.stem_of(0).shape
        out = torch.empty(p, m, h, w, dtype=low.dtype, device=low.device)
        if features.stem_rows is None:
            chunks = [(i, torch.tensor([i], device=low.device)) for i in range(p)]
        else:
            chunks = features.groups()
        # one slice's prompts at a time, so that each intermediate stays in cache between its passes
        for u, sel in chunks:
            n = sel.numel()
            start = int(sel[0])
            consecutive = int(sel[-1]) - start + 1 == n

            def rows(t: torch.Tensor) -> torch.Tensor:
                return t.narrow(0, start, n) if consecutive else t.index_select(0, sel)  # noqa: B023

            fused = F.interpolate(rows(hq), size=half_size, mode="bilinear", align_corners=False)
            fused.add_(features.half_of(u))
            torch.ops.aten.gelu_(fused)
            # n x (H W) x c @ n x c x 1: the per-pixel dot product with the prompt's weights
            mid = torch.bmm(fused.permute(0, 2, 3, 1).reshape(n, -1, c), rows(w_mid)[:, :, None])
            res = F.interpolate(mid.view(n, 1, *half_size), size=(h, w), mode="bilinear", align_corners=False)
            stem_u = features.stem_of(u).permute(1, 2, 0).reshape(h * w, c // 2)  # a view when channels-last
            res.view(n, h * w).addmm_(rows(w_stem), stem_u.t())
            o = F.interpolate(rows(low), size=(h, w), mode="bilinear", align_corners=False)
            o.add_(res)  # the residual is shared by the M masks of a prompt
            if n == p:  # one slice's prompts are the whole batch (a click): no copy
                return o
            if consecutive:
                out.narrow(0, start, n).copy_(o)
            else:
                out.index_copy_(0, sel, o)
        return out
