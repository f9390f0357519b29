"""Loading SAM-family checkpoints safely and telling the user what a file is.

Handles official SAM ``.pth``, MedSAM ``.pth``, training dicts (``{"model": ...}``, ``{"state_dict": ...}``), DDP
``module.`` prefixes and safetensors. Files are always read with ``map_location="cpu"`` and ``weights_only=True``:
a pickle that needs arbitrary code is refused with an explanation, never executed.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file

from salt_seg.model.hires import HIRES_PREFIX
from salt_seg.model.sam import SamModel
from salt_seg.model.variants import VARIANTS, build_model, get_variant

log = logging.getLogger(__name__)

WRAPPER_KEYS = ("model", "state_dict", "model_state_dict", "module", "net", "network")
PREFIXES = ("module.", "_orig_mod.", "model.", "sam.")
#: Meta's published file names carry the first six hex digits of the file's SHA-256.
KNOWN_FILE_HASH_PREFIXES = {
    "01ec64": "Meta SAM vit_b",
    "0b3195": "Meta SAM vit_l",
    "4b8939": "Meta SAM vit_h",
}
OPTIONAL_KEYS = re.compile(r"^class_tokens\.")


@dataclass
class CheckpointInfo:
    """What was found inside a checkpoint file."""

    path: str
    format: str  # "safetensors" | "torch"
    wrapper: str | None = None  # e.g. "model" for {"model": state_dict}
    prefix: str | None = None  # e.g. "module." (DDP)
    variant: str | None = None  # detected from tensor shapes
    image_size: int | None = None  # native input size implied by the position embedding
    num_classes: int = 0
    num_tensors: int = 0
    num_parameters: int = 0
    content_hash: str = ""
    file_sha256: str = ""
    origin: str | None = None
    notes: list[str] = field(default_factory=list)


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def state_dict_hash(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the canonical state dict: sorted keys, each with dtype, shape and raw tensor bytes.

    The same weights saved as ``.pth``, safetensors or with a ``module.`` prefix give the same hash (strip the
    prefix first with :func:`canonicalize_state_dict`).
    """
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key].detach().cpu().contiguous()
        h.update(key.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _read_raw(path: Path) -> tuple[object, str]:
    if not path.exists():
        raise FileNotFoundError(f"{path}: checkpoint file not found")
    if not path.is_file():
        raise ValueError(f"{path}: is not a file (expected a .pth or .safetensors checkpoint)")
    with open(path, "rb") as f:
        head = f.read(16)
    if path.suffix == ".safetensors" or (len(head) >= 9 and head[8:9] == b"{"):
        try:
            return load_file(str(path), device="cpu"), "safetensors"
        except (SafetensorError, OSError, ValueError) as exc:
            raise ValueError(f"{path}: not a readable safetensors file ({exc})") from None
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing: noise to a user
            warnings.filterwarnings("ignore", message=".*pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True), "torch"
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"{path}: refused to load: the file contains Python objects beyond tensors, which could run code "
            f"({_unpickler_reason(exc)}). If you trust its source, load it yourself and re-save only the state "
            f"dict (torch.save(obj['model'].state_dict(), 'weights.pth'))."
        ) from None
    except Exception as exc:  # noqa: BLE001 - torch.load raises many types on garbage input
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({msg})") from None


def _unpickler_reason(exc: Exception) -> str:
    """What torch's weights-only unpickler objected to (``Unsupported global: GLOBAL posix.system``), in short."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        reason = " ".join(
            text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation")[0].split()
        )
        if reason:
            return reason.rstrip(".")
    return "unsupported object"


def canonicalize_state_dict(
    obj: object, path: str = "<checkpoint>"
) -> tuple[dict[str, torch.Tensor], str | None, str | None]:
    """Unwrap training dicts and strip wrapper prefixes.

    Returns:
        The flat ``key -> tensor`` dict in Meta's layout, the wrapper key found (or None), the prefix (or None).
    """
    wrapper = None
    for _ in range(3):  # {"model": {"state_dict": ...}} happens
        if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
            if inner is None:
                break
            wrapper = inner if wrapper is None else f"{wrapper}.{inner}"
            obj = obj[inner]
        else:
            break
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"{path}: no state dict found (expected a mapping of parameter names to tensors)")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(f"{path}: no tensors found; top-level keys: {sorted(map(str, obj))[:8]}")
    prefix = None
    for p in PREFIXES:
        if all(k.startswith(p) for k in tensors):
            prefix = p if prefix is None else prefix + p
            tensors = {k[len(p) :]: v for k, v in tensors.items()}
    return tensors, wrapper, prefix


def detect_variant(state_dict: dict[str, torch.Tensor]) -> tuple[str | None, int | None]:
    """Variant name and native image size inferred from tensor shapes (``None`` when nothing matches)."""
    w = state_dict.get("image_encoder.patch_embed.proj.weight")
    pos = state_dict.get("image_encoder.pos_embed")
    if w is None:
        return None, None
    dim, patch = int(w.shape[0]), int(w.shape[-1])
    depth = len({m.group(1) for k in state_dict if (m := re.match(r"image_encoder\.blocks\.(\d+)\.", k))})
    size = int(pos.shape[1]) * patch if pos is not None else None
    for spec in VARIANTS.values():
        if spec.encoder_embed_dim == dim and spec.encoder_depth == depth and spec.patch_size == patch:
            return spec.name, size
    return None, size


def read_checkpoint(
    path: str | Path, *, compute_hash: bool = True
) -> tuple[dict[str, torch.Tensor], CheckpointInfo]:
    """Read a checkpoint into Meta's flat key layout and describe it.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unreadable, needs arbitrary code, or holds no state dict (message names the file).
    """
    path = Path(path)
    raw, fmt = _read_raw(path)
    sd, wrapper, prefix = canonicalize_state_dict(raw, str(path))
    variant, size = detect_variant(sd)
    info = CheckpointInfo(
        path=str(path), format=fmt, wrapper=wrapper, prefix=prefix, variant=variant, image_size=size
    )
    info.num_tensors = len(sd)
    info.num_parameters = sum(int(t.numel()) for t in sd.values())
    cls = sd.get("class_tokens.weight")
    info.num_classes = int(cls.shape[0]) if cls is not None else 0
    if compute_hash:
        info.content_hash = state_dict_hash(sd)
        info.file_sha256 = file_sha256(path)
        info.origin = KNOWN_FILE_HASH_PREFIXES.get(info.file_sha256[:6])
    if wrapper:
        info.notes.append(f"state dict found inside a training wrapper dict under {wrapper!r}")
    if prefix:
        info.notes.append(f"key prefix {prefix!r} stripped (DDP / wrapper)")
    return sd, info


def _resize_pos_embed(t: torch.Tensor, grid: int) -> torch.Tensor:
    """``1 x g x g x C`` absolute position embedding -> ``1 x grid x grid x C`` (bicubic)."""
    x = t.permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(grid, grid), mode="bicubic", align_corners=False)
    return x.permute(0, 2, 3, 1).to(t.dtype)


def _resize_rel_pos(t: torch.Tensor, length: int) -> torch.Tensor:
    """``L x C`` relative position table -> ``length x C`` (linear)."""
    x = F.interpolate(t.float().T[None], size=length, mode="linear", align_corners=False)[0].T
    return x.to(t.dtype).contiguous()


def adapt_to_model(state_dict: dict[str, torch.Tensor], model: SamModel) -> dict[str, torch.Tensor]:
    """Interpolate position embeddings and relative-position tables to the model's input size.

    Only tensors whose *only* mismatch is spatial size are resized; anything else is left for the strict
    loader to report.
    """
    target = model.state_dict()
    out = dict(state_dict)
    for key, t in state_dict.items():
        want = target.get(key)
        if want is None or want.shape == t.shape:
            continue
        if key == "image_encoder.pos_embed" and t.ndim == 4 and t.shape[-1] == want.shape[-1]:
            out[key] = _resize_pos_embed(t, int(want.shape[1]))
        elif re.search(r"\.attn\.rel_pos_[hw]$", key) and t.ndim == 2 and t.shape[1] == want.shape[1]:
            out[key] = _resize_rel_pos(t, int(want.shape[0]))
    return out


def load_weights(model: SamModel, state_dict: dict[str, torch.Tensor], *, source: str = "checkpoint") -> None:
    """Strictly load Meta-layout weights into ``model`` (resizing position tables to its input size).

    Learned class tokens may be absent from a base checkpoint (they are created fresh). Anything else missing,
    unexpected or of the wrong shape raises ``ValueError`` naming the first offending keys and the likely cause.
    """
    sd = adapt_to_model(state_dict, model)
    target = model.state_dict()
    missing = [k for k in target if k not in sd and not OPTIONAL_KEYS.match(k)]
    unexpected = [k for k in sd if k not in target and not OPTIONAL_KEYS.match(k)]
    mismatched = [k for k in sd if k in target and sd[k].shape != target[k].shape]
    if missing or unexpected or mismatched:
        detected, _ = detect_variant(state_dict)
        parts = []
        if mismatched:
            k = mismatched[0]
            parts.append(
                f"{len(mismatched)} shape mismatches (e.g. {k}: file {tuple(sd[k].shape)} vs model "
                f"{tuple(target[k].shape)})"
            )
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        hint = (
            f"the file looks like variant {detected!r}; use --variant {detected}"
            if detected and detected != model.variant
            else "is this a SAM image-encoder/prompt-encoder/mask-decoder checkpoint?"
        )
        raise ValueError(f"{source} does not fit variant {model.variant!r}: {'; '.join(parts)}; {hint}")
    cls = sd.get("class_tokens.weight")
    if cls is not None:
        model.set_num_classes(int(cls.shape[0]))
    elif model.class_tokens is not None:
        sd = dict(sd)
        sd["class_tokens.weight"] = model.class_tokens.weight.detach().clone()
    model.load_state_dict(sd, strict=True)


def has_hires(state_dict: dict[str, torch.Tensor]) -> bool:
    """Whether a state dict carries the full-resolution branch (:mod:`salt_seg.model.hires`)."""
    return any(k.startswith(HIRES_PREFIX) for k in state_dict)


def load_base_model(
    variant: str | None,
    checkpoint: str | Path | None,
    image_size: int | None = None,
    num_classes: int = 0,
    hires: bool | None = None,
) -> tuple[SamModel, CheckpointInfo | None]:
    """Build a variant and load base weights into it.

    Args:
        variant: variant name; detected from the checkpoint when ``None``.
        checkpoint: weights file, or ``None`` for random initialisation (``variant`` required then).
        image_size: input size; defaults to the checkpoint's own size (from its position embedding), else the
            variant's native size.
        num_classes: learned class tokens to create when the checkpoint has none.
        hires: the full-resolution branch: ``None`` = as the checkpoint has it (none without a checkpoint),
            ``True`` = keep the checkpoint's or add a fresh one (zero residual: SAM's upsampled logits),
            ``False`` = SAM's own quarter-resolution output (a branch in the file is ignored).

    Returns:
        The model (eval mode, on CPU) and the checkpoint description (``None`` without a checkpoint).
    """
    if checkpoint is None:
        if variant is None:
            raise ValueError("give --variant (or a --checkpoint to detect it from)")
        return build_model(variant, image_size=image_size, num_classes=num_classes, hires=bool(hires)), None
    sd, info = read_checkpoint(checkpoint)
    if variant is None:
        if info.variant is None:
            raise ValueError(f"{checkpoint}: cannot tell the SAM variant from its tensors; pass --variant")
        variant = info.variant
    get_variant(variant)
    if image_size is None and variant == info.variant:
        image_size = info.image_size  # the size the checkpoint was trained at
    in_file = has_hires(sd)
    want = in_file if hires is None else bool(hires)
    model = build_model(variant, image_size=image_size, num_classes=num_classes, hires=want)
    if want and not in_file:  # a fresh branch on a base without one
        sd = {**sd, **{HIRES_PREFIX + k: v for k, v in model.hires.state_dict().items()}}  # type: ignore[union-attr]
    elif in_file and not want:
        sd = {k: v for k, v in sd.items() if not k.startswith(HIRES_PREFIX)}
    load_weights(model, sd, source=str(checkpoint))
    log.info("loaded %s (%s, %d tensors)", checkpoint, variant, info.num_tensors)
    return model.eval(), info
