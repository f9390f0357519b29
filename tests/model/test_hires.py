"""The full-resolution mask branch (salt_seg/model/hires.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from salt_seg.model import build_model
from salt_seg.model.checkpoint import has_hires, load_base_model
from salt_seg.model.hires import HIRES_PREFIX, ImageFeatures, stack_embeddings
from salt_seg.model.sam import InputPrompt

BOX = InputPrompt(box=torch.tensor([40.0, 50.0, 150.0, 170.0]))
POINT = InputPrompt(points=torch.tensor([[90.0, 100.0]]), labels=torch.tensor([1]))


@pytest.fixture(scope="module")
def hires_model():
    torch.manual_seed(7)
    return build_model("tiny", num_classes=2, hires=True)


def _meta_decoder_logits(model, image: torch.Tensor, prompt: InputPrompt) -> torch.Tensor:
    """segment_anything's own MaskDecoder.forward on one image and one prompt (single-mask output)."""
    emb = model.image_encoder(image)
    sparse, dense = model.prompt_encoder(
        points=(prompt.points[None], prompt.labels[None]) if prompt.points is not None else None,
        boxes=prompt.box[None] if prompt.box is not None else None,
        masks=None,
    )
    masks, _ = model.mask_decoder(emb, model.prompt_encoder.get_dense_pe(), sparse, dense, False)
    return masks


@torch.no_grad()
def test_without_branch_outputs_equal_segment_anythings_decoder_bit_for_bit(tiny_model) -> None:
    image = torch.randn(1, 3, 256, 256)
    for prompt in (BOX, POINT):
        ours, _ = tiny_model(image, [prompt])
        assert ours.shape == (1, 1, 64, 64)
        assert torch.equal(ours, _meta_decoder_logits(tiny_model, image, prompt))
    assert isinstance(tiny_model.encode_images(image), torch.Tensor)  # a plain embedding, as before


@torch.no_grad()
def test_a_branch_in_the_file_is_ignored_with_hires_false_and_the_output_is_unchanged(tmp_path) -> None:
    torch.manual_seed(3)
    with_branch = build_model("tiny", hires=True)
    sd = {k: v.contiguous() for k, v in with_branch.state_dict().items() if not k.startswith("class_tokens.")}
    plain_sd = {k: v for k, v in sd.items() if not k.startswith(HIRES_PREFIX)}
    save_file(sd, str(tmp_path / "v2.safetensors"))
    save_file(plain_sd, str(tmp_path / "v1.safetensors"))
    assert has_hires(sd) and not has_hires(plain_sd)
    v1, _ = load_base_model("tiny", tmp_path / "v1.safetensors")
    v2_off, _ = load_base_model("tiny", tmp_path / "v2.safetensors", hires=False)
    v2, _ = load_base_model("tiny", tmp_path / "v2.safetensors")
    assert v1.hires is None and v2_off.hires is None and v2.hires is not None
    image = torch.randn(1, 3, 256, 256)
    a, ia = v1(image, [BOX])
    b, ib = v2_off(image, [BOX])
    assert torch.equal(a, b) and torch.equal(ia, ib)
    c, _ = v2(image, [BOX])
    assert c.shape == (1, 1, 256, 256)
    for k, v in v2.hires.state_dict().items():  # the file's branch weights were loaded
        assert torch.equal(v, sd[HIRES_PREFIX + k])


@torch.no_grad()
def test_fresh_branch_starts_from_sams_upsampled_logits(hires_model) -> None:
    image = torch.randn(1, 3, 256, 256)
    feats = hires_model.encode_images(image)
    assert isinstance(feats, ImageFeatures)
    assert feats.stem.shape == (1, 8, 256, 256) and feats.early.shape == (1, 16, 64, 64)
    assert feats.half.shape == (1, 16, 128, 128)
    logits, _ = hires_model.decode_prompts(feats, [BOX], [0])
    assert logits.shape == (1, 1, 256, 256)
    # the residual's last layer is zero at init: the output is SAM's own mask (with the HQ token aboard) upsampled
    hires = hires_model.hires
    assert torch.count_nonzero(hires.hq_mlp(torch.randn(5, 128))) == 0  # zero hypernetwork -> zero residual
    saved = hires.hq_mlp.layers[-1].weight.clone()
    hires.hq_mlp.layers[-1].weight.normal_()
    changed, _ = hires_model.decode_prompts(feats, [BOX], [0])
    hires.hq_mlp.layers[-1].weight.copy_(saved)
    assert not torch.allclose(changed, logits)
    low = changed - logits  # = the residual alone
    assert float(low.abs().max()) > 1e-3
    encoder_embedding = hires_model.image_encoder(image)
    assert torch.allclose(feats.embedding, encoder_embedding, atol=1e-6)  # same encoder pass as SAM's


@torch.no_grad()
def test_image_features_batch_like_a_tensor(hires_model) -> None:
    images = torch.randn(3, 3, 256, 256)
    feats = hires_model.encode_images(images)
    assert len(feats) == 3 and feats.shape[0] == 3
    per_image = list(feats)
    assert per_image[1].embedding.shape == feats.embedding.shape[1:]
    restacked = stack_embeddings([per_image[2], per_image[0]])
    selected = feats.index_select(0, torch.tensor([2, 0]))
    assert selected.stem is feats.stem  # rows recorded, the largest tensor not copied per prompt
    # without autograd the stacked stems stay the cached per-slice tensors (no copy into a batch)
    assert isinstance(restacked.stem, tuple) and restacked.stem[0].data_ptr() == per_image[2].stem.data_ptr()
    batched = restacked.batched()
    assert torch.equal(batched.stem, selected[0:2].stem) and torch.equal(batched.half, selected[0:2].half)
    with torch.enable_grad():  # with autograd, stack gives batch tensors
        assert torch.equal(stack_embeddings([per_image[2], per_image[0]]).stem, batched.stem)
    weights = torch.randn(2, feats.stem.shape[1])
    torch.testing.assert_close(
        selected.project(weights, selected.stem), restacked.project(weights, batched.stem)
    )
    batched, _ = hires_model.decode_prompts(feats, [BOX, POINT, BOX], [0, 1, 2])
    for i, p in enumerate([BOX, POINT, BOX]):
        single, _ = hires_model.decode_prompts(feats[i : i + 1], [p], [0])
        torch.testing.assert_close(batched[i : i + 1], single, atol=1e-5, rtol=0)


def test_gradients_reach_the_branch_and_the_loss_is_at_full_resolution(hires_model) -> None:
    hires_model.train()
    for p in hires_model.parameters():
        p.requires_grad_(True)
    image = torch.randn(1, 3, 256, 256)
    target = torch.zeros(1, 1, 256, 256)
    target[..., 60:64, 40:200] = 1.0  # a 4 px ribbon: invisible on a 64 x 64 grid
    logits, _ = hires_model(image, [BOX])
    F.binary_cross_entropy_with_logits(logits, target).backward()
    hires = hires_model.hires
    assert float(hires.hq_mlp.layers[-1].weight.grad.abs().sum()) > 0
    assert hires.stem_full[0].weight.grad is None or hires.stem_full[0].weight.grad.abs().sum() == 0  # w = 0
    with torch.no_grad():  # after a first step the hypernetwork is non-zero: the stem learns too
        hires.hq_mlp.layers[-1].weight.normal_(0, 0.1)
    hires_model.zero_grad(set_to_none=True)
    logits, _ = hires_model(image, [BOX])
    F.binary_cross_entropy_with_logits(logits, target).backward()
    assert float(hires.stem_full[0].weight.grad.abs().sum()) > 0
    with torch.no_grad():
        hires.hq_mlp.layers[-1].weight.zero_()
    hires_model.zero_grad(set_to_none=True)
    hires_model.eval()


def test_decoding_a_plain_embedding_on_a_model_with_a_branch_is_a_clear_error(hires_model) -> None:
    with torch.no_grad():
        emb = hires_model.image_encoder(torch.randn(1, 3, 256, 256))
        with pytest.raises(ValueError, match="full-resolution branch"):
            hires_model.decode_prompts(emb, [BOX], [0])


@torch.no_grad()
def test_the_stem_projection_folded_into_the_weights_is_exact(hires_model) -> None:
    images = torch.randn(2, 3, 256, 256)
    feats = hires_model.encode_images(images)
    hires = hires_model.hires
    w2 = torch.randn(2, hires.channels)
    projected = hires.stem_proj(feats.stem)  # the unfolded form: project the cached stem, then weigh it
    direct = torch.einsum("pc,pchw->phw", w2, projected)
    folded = (
        feats.project(w2 @ hires.stem_proj.weight[:, :, 0, 0], feats.stem)
        + (w2 @ hires.stem_proj.bias)[:, None, None]
    )
    torch.testing.assert_close(folded, direct, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("multimask", [False, True])
def test_the_inference_path_equals_the_training_path(multimask) -> None:
    """Without autograd the branch takes a faster route (channels-last stem, in-place activations, one
    accumulation buffer); its logits equal the autograd route's to float rounding, for prompts sharing slices
    (rows recorded), one prompt per slice, and multimask output."""
    torch.manual_seed(3)
    model = build_model("tiny", num_classes=2, hires=True).eval()
    with torch.no_grad():  # a trained-looking branch: the residual is not zero
        for p in model.hires.parameters():
            p.add_(0.05 * torch.randn_like(p))
    images = torch.randn(3, 3, 256, 256)
    prompts, rows = [BOX, POINT, BOX, POINT, BOX], [0, 0, 1, 2, 2]

    def decode(grad: bool):
        with torch.set_grad_enabled(grad):
            feats = model.encode_images(images)
            shared, iou = model.decode_prompts(feats, prompts, rows, multimask_output=multimask)
            own = model.decode_prompts(feats, prompts[:3], [0, 1, 2], multimask_output=multimask)[0]
        return feats, shared.detach(), iou.detach(), own.detach()

    f_fast, shared_fast, iou_fast, own_fast = decode(False)
    f_ref, shared_ref, iou_ref, own_ref = decode(True)
    assert f_fast.stem.is_contiguous(memory_format=torch.channels_last)  # the fast route was taken
    torch.testing.assert_close(f_fast.stem, f_ref.stem.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(f_fast.half, f_ref.half.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shared_fast, shared_ref, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(iou_fast, iou_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(own_fast, own_ref, atol=1e-4, rtol=1e-5)
    assert float(shared_ref.std()) > 0.1  # the comparison is not between two constant maps
