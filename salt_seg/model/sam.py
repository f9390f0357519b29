"""A differentiable, batched SAM.

``segment_anything.Sam.forward`` is decorated ``@torch.no_grad()`` and its decoder repeats the image embedding
once per prompt (``repeat_interleave``), so it can neither train nor batch B images with one prompt each.
:class:`SamModel` receives the same three sub-modules (so Meta's state-dict keys load unchanged), adds learned
per-class prompt tokens for prompt-free segmentation, and decodes a batch of prompts against the embedding of
the image each prompt belongs to.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder
from torch import nn

from salt_seg.model.hires import HighResBranch, ImageFeatures
from salt_seg.preprocessing import SliceTransform
from salt_seg.prompts import Prompt

#: Class tokens start at the scale of SAM's own sparse prompt tokens (point/box embeddings are N(0, 1) plus
#: unit-amplitude Fourier features). At std 0.02 (the previous init) the decoder could barely tell the classes
#: apart and few-shot training stalled: on 10 mni152-tissue slices the training loss stayed at 0.69 for 100
#: steps, against 0.37 after 50 steps with std 1 (BENCHMARKS.md, "Why training stalled").
CLASS_TOKEN_INIT_STD = 1.0


@dataclass
class InputPrompt:
    """One prompt in *model-input* pixel coordinates (after resize, before the encoder).

    Attributes:
        points: ``N x 2`` float tensor of (x, y), or ``None``.
        labels: ``N`` int tensor, 1 positive / 0 negative, or ``None``.
        box: ``4`` float tensor (x0, y0, x1, y1), or ``None``.
        class_id: label id; used as the learned class token when there are neither points nor a box.
    """

    points: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    box: torch.Tensor | None = None
    class_id: int = 1

    @property
    def is_automatic(self) -> bool:
        return self.points is None and self.box is None

    @classmethod
    def from_prompt(cls, prompt: Prompt, transform: SliceTransform) -> InputPrompt:
        """Map a slice-pixel :class:`~salt_seg.prompts.Prompt` into model-input coordinates."""
        points = labels = box = None
        if prompt.points:
            pts = transform.coords_to_input(np.asarray(prompt.points, dtype=np.float64))
            points = torch.as_tensor(pts, dtype=torch.float32)
            labels = torch.as_tensor(prompt.point_labels, dtype=torch.int64)
        if prompt.box is not None:
            box = torch.as_tensor(transform.coords_to_input(np.asarray(prompt.box)), dtype=torch.float32)
        return cls(points=points, labels=labels, box=box, class_id=prompt.class_id)

    def signature(self) -> tuple[int, bool, bool]:
        """Prompts with equal signatures encode to the same number of sparse tokens and batch together."""
        n = 0 if self.points is None else int(self.points.shape[0])
        return n, self.box is not None, self.is_automatic


class SamModel(nn.Module):
    """SAM with a differentiable batched forward and optional learned class prompt tokens.

    Args:
        image_encoder: SAM's ViT image encoder.
        prompt_encoder: SAM's prompt encoder.
        mask_decoder: SAM's two-way-transformer mask decoder.
        num_classes: number of learned class prompt tokens (0 = none).
        variant: name of the variant it was built as (informational).
        hires: the full-resolution mask branch (:mod:`salt_seg.model.hires`), or ``None`` for SAM's own
            quarter-resolution output.
    """

    def __init__(
        self,
        image_encoder: ImageEncoderViT,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        num_classes: int = 0,
        variant: str = "",
        hires: HighResBranch | None = None,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.variant = variant
        self.hires = hires
        dim = prompt_encoder.embed_dim
        self.class_tokens: nn.Embedding | None = None
        if num_classes > 0:
            self.class_tokens = nn.Embedding(num_classes, dim)
            nn.init.normal_(self.class_tokens.weight, std=CLASS_TOKEN_INIT_STD)

    @property
    def image_size(self) -> int:
        return int(self.image_encoder.img_size)

    @property
    def num_classes(self) -> int:
        return 0 if self.class_tokens is None else int(self.class_tokens.num_embeddings)

    def set_num_classes(self, num_classes: int) -> None:
        """(Re)create the learned class tokens, e.g. after loading a checkpoint that has none."""
        if num_classes == self.num_classes:
            return
        device = self.prompt_encoder.no_mask_embed.weight.device
        self.class_tokens = None
        if num_classes > 0:
            self.class_tokens = nn.Embedding(num_classes, self.prompt_encoder.embed_dim).to(device)
            nn.init.normal_(self.class_tokens.weight, std=CLASS_TOKEN_INIT_STD)

    @property
    def output_size(self) -> int:
        """Side of the mask logits: the input side with the full-resolution branch, else a quarter of it."""
        return self.image_size if self.hires is not None else self.image_size // 4

    def encode_images(self, images: torch.Tensor) -> torch.Tensor | ImageFeatures:
        """``B x 3 x S x S`` preprocessed images -> ``B x D x S/16 x S/16`` embeddings.

        With the full-resolution branch the result is an :class:`~salt_seg.model.hires.ImageFeatures` holding
        the embedding and the branch's per-image features.
        """
        if self.hires is None:
            return self.image_encoder(images)
        enc = self.image_encoder
        x = enc.patch_embed(images)
        if enc.pos_embed is not None:
            x = x + enc.pos_embed
        early = x
        for i, blk in enumerate(enc.blocks):
            x = blk(x)
            if i == self.hires.early_block:
                early = x
        embedding = enc.neck(x.permute(0, 3, 1, 2))
        return self.hires.image_features(images, early, embedding)

    def _encode_group(self, prompts: list[InputPrompt], device: torch.device) -> torch.Tensor:
        """Sparse tokens for prompts sharing one signature: ``P x T x D``."""
        first = prompts[0]
        if first.is_automatic:
            if self.class_tokens is None:
                raise RuntimeError(
                    "prompt-free (automatic) prompts need a model with class tokens (num_classes > 0)"
                )
            ids = torch.tensor([p.class_id - 1 for p in prompts], device=device)
            if int(ids.max()) >= self.num_classes or int(ids.min()) < 0:
                raise ValueError(
                    f"class id out of range 1..{self.num_classes}: {[p.class_id for p in prompts]}"
                )
            return self.class_tokens(ids)[:, None, :]
        points = None
        if first.points is not None:
            # prompts of one group share their signature: all have points (and labels) or none
            coords = torch.stack([cast(torch.Tensor, p.points) for p in prompts]).to(device)
            labels = torch.stack([cast(torch.Tensor, p.labels) for p in prompts]).to(device)
            points = (coords, labels)
        boxes = (
            torch.stack([cast(torch.Tensor, p.box) for p in prompts]).to(device)
            if first.box is not None
            else None
        )
        sparse, _ = self.prompt_encoder(points=points, boxes=boxes, masks=None)
        return sparse

    def decode(
        self,
        embeddings: torch.Tensor | ImageFeatures,
        sparse: torch.Tensor,
        multimask_output: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode P prompts against P image embeddings (one each; no repeat).

        Args:
            embeddings: ``P x D x h x w`` image embeddings (or :class:`ImageFeatures`), row i belongs to prompt i.
            sparse: ``P x T x D`` sparse prompt tokens.
            multimask_output: return SAM's 3 ambiguity masks instead of the single-mask output.

        Returns:
            ``P x M x s x s`` mask logits and ``P x M`` predicted IoU (M = 3 or 1), where ``s`` is
            :attr:`output_size` (``4h``, or the input side with the full-resolution branch).
        """
        dec = self.mask_decoder
        features = embeddings if isinstance(embeddings, ImageFeatures) else None
        if self.hires is not None and features is None:
            raise ValueError("this model has a full-resolution branch: decode the output of encode_images()")
        emb = features.embedding if features is not None else embeddings
        dense = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        pe = self.prompt_encoder.get_dense_pe()
        n = sparse.shape[0]
        output_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
        if self.hires is not None:  # the HQ token rides along with SAM's output tokens
            output_tokens = torch.cat([output_tokens, self.hires.hq_token.weight], dim=0)
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(n, -1, -1), sparse], dim=1)
        src = emb + dense
        pos_src = pe.expand(n, -1, -1, -1)
        b, c, h, w = src.shape
        hs, src = dec.transformer(src, pos_src, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + dec.num_mask_tokens, :]
        upscaled = dec.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(dec.output_hypernetworks_mlps)], dim=1
        )
        b, c, h, w = upscaled.shape
        masks = (hyper_in @ upscaled.view(b, c, h * w)).view(b, -1, h, w)
        iou_pred = dec.iou_prediction_head(iou_token_out)
        sel = slice(1, None) if multimask_output else slice(0, 1)
        masks = masks[:, sel]
        if self.hires is not None and features is not None:
            masks = self.hires.logits(masks, hs[:, 1 + dec.num_mask_tokens, :], upscaled, features)
        return masks, iou_pred[:, sel]

    def decode_prompts(
        self,
        embeddings: torch.Tensor | ImageFeatures,
        prompts: list[InputPrompt],
        image_index: torch.Tensor | list[int] | None = None,
        multimask_output: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode a list of prompts; ``image_index[i]`` says which embedding row prompt ``i`` belongs to.

        Prompts with different token counts are decoded in separate groups and reassembled in order.
        """
        if image_index is None:
            if len(prompts) != embeddings.shape[0]:
                raise ValueError(f"{len(prompts)} prompts for {embeddings.shape[0]} images: pass image_index")
            image_index = list(range(len(prompts)))
        index = torch.as_tensor(image_index, dtype=torch.long, device=embeddings.device)
        groups: dict[tuple[int, bool, bool], list[int]] = defaultdict(list)
        for i, p in enumerate(prompts):
            groups[p.signature()].append(i)
        masks_out: list[torch.Tensor | None] = [None] * len(prompts)
        iou_out: list[torch.Tensor | None] = [None] * len(prompts)
        for members in groups.values():
            sparse = self._encode_group([prompts[i] for i in members], embeddings.device)
            emb = embeddings.index_select(0, index[members])
            masks, iou = self.decode(emb, sparse, multimask_output)
            for j, i in enumerate(members):
                masks_out[i], iou_out[i] = masks[j], iou[j]
        return torch.stack(masks_out), torch.stack(iou_out)  # type: ignore[arg-type]

    def forward(
        self,
        images: torch.Tensor,
        prompts: list[InputPrompt],
        image_index: torch.Tensor | list[int] | None = None,
        multimask_output: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Differentiable forward.

        Args:
            images: ``B x 3 x S x S`` preprocessed images (see :func:`salt_seg.preprocessing.prepare_slice`).
            prompts: ``P`` prompts in model-input coordinates (``P == B`` unless ``image_index`` is given).
            image_index: ``P`` indices into the batch; defaults to one prompt per image.
            multimask_output: return 3 masks per prompt instead of 1.

        Returns:
            Mask logits ``P x M x s x s`` (``s`` = :attr:`output_size`) and IoU predictions ``P x M``.
        """
        embeddings = self.encode_images(images)
        return self.decode_prompts(embeddings, prompts, image_index, multimask_output)
