from __future__ import annotations

import pytest
import torch

from salt_seg.model.sam import InputPrompt


def _prompts() -> list[InputPrompt]:
    return [
        InputPrompt(box=torch.tensor([10.0, 20.0, 100.0, 150.0])),
        InputPrompt(points=torch.tensor([[60.0, 70.0], [200.0, 30.0]]), labels=torch.tensor([1, 0])),
        InputPrompt(class_id=2),
    ]


@pytest.mark.parametrize("multimask", [False, True])
def test_batched_forward_equals_single_forwards(tiny_model, multimask: bool) -> None:
    images = torch.randn(3, 3, 256, 256)
    prompts = _prompts()
    with torch.no_grad():
        batched, iou_b = tiny_model(images, prompts, multimask_output=multimask)
        singles = [tiny_model(images[i : i + 1], [prompts[i]], multimask_output=multimask) for i in range(3)]
    m = 3 if multimask else 1
    assert batched.shape == (3, m, 64, 64)
    for i, (logits, iou) in enumerate(singles):
        torch.testing.assert_close(batched[i : i + 1], logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(iou_b[i : i + 1], iou, atol=1e-5, rtol=0)


def test_same_prompt_type_batches_equal_singles(tiny_model) -> None:
    images = torch.randn(3, 3, 256, 256)
    prompts = [InputPrompt(box=torch.tensor([5.0 * i, 8.0, 90.0 + i, 120.0])) for i in range(3)]
    with torch.no_grad():
        batched, _ = tiny_model(images, prompts)
        for i in range(3):
            single, _ = tiny_model(images[i : i + 1], [prompts[i]])
            torch.testing.assert_close(batched[i : i + 1], single, atol=1e-5, rtol=0)


def test_gradients_reach_the_image_encoder(tiny_model) -> None:
    tiny_model.zero_grad()
    images = torch.randn(2, 3, 256, 256)
    logits, iou = tiny_model(images, _prompts()[:2])
    (logits.mean() + iou.mean()).backward()
    g = tiny_model.image_encoder.blocks[0].attn.qkv.weight.grad
    assert g is not None and g.abs().sum() > 0
    assert tiny_model.image_encoder.patch_embed.proj.weight.grad.abs().sum() > 0
    tiny_model.zero_grad()


def test_several_prompts_per_image_via_image_index(tiny_model) -> None:
    images = torch.randn(2, 3, 256, 256)
    prompts = [InputPrompt(class_id=1), InputPrompt(class_id=2), InputPrompt(class_id=1)]
    with torch.no_grad():
        logits, _ = tiny_model(images, prompts, image_index=[0, 0, 1])
        emb = tiny_model.encode_images(images)
        ref0, _ = tiny_model.decode_prompts(emb[:1], [prompts[1]], [0])
    assert logits.shape == (3, 1, 64, 64)
    torch.testing.assert_close(logits[1:2], ref0, atol=1e-5, rtol=0)
    assert not torch.allclose(logits[0], logits[1])  # different class tokens give different masks


def test_automatic_prompt_without_class_tokens_is_an_error() -> None:
    from salt_seg.model import build_model

    m = build_model("tiny", num_classes=0)
    with pytest.raises(RuntimeError, match="class tokens"):
        m(torch.randn(1, 3, 256, 256), [InputPrompt(class_id=1)])


def test_class_id_out_of_range(tiny_model) -> None:
    with pytest.raises(ValueError, match="class id out of range"):
        tiny_model(torch.randn(1, 3, 256, 256), [InputPrompt(class_id=3)])
