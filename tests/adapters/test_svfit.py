"""SVFit: only the top-r singular values train; r from the energy share."""

from __future__ import annotations

import torch

from salt_seg.adapters import AdapterConfig, adapter_layers, inject_adapters, resolve_rank
from tests.adapters.conftest import make_tiny


def test_energy_rank_and_update_in_the_top_subspace() -> None:
    model = make_tiny()
    inject_adapters(model, AdapterConfig(name="svfit", rank={"energy": 0.9}), progress=False)
    for name, layer in adapter_layers(model).items():
        w = layer.base_layer.weight.detach()
        S = torch.linalg.svdvals(w)
        assert layer.rank == resolve_rank({"energy": 0.9}, S, min(w.shape)), name
        assert sum(p.numel() for p in layer.adapter_parameters()) == layer.rank
    layer = next(iter(adapter_layers(model).values()))
    with torch.no_grad():
        layer.sigma.mul_(1.5)
    delta = layer.get_delta_weight()
    U, _, Vh = torch.linalg.svd(layer.base_layer.weight.detach(), full_matrices=False)
    r = layer.rank
    assert (U[:, r:].T @ delta).abs().max().item() < 1e-4  # nothing outside the top-r column space
    assert (delta @ Vh[r:].T).abs().max().item() < 1e-4
    assert delta.abs().max().item() > 1e-2
