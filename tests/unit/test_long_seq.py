"""TiledMLP and the tiled logits loss on one process: the loss and every gradient of the untiled model.

The integration test compares losses between trials, and Adam hides a gradient's scale; here the gradients
themselves are compared, with DeepSpeed's 1/accumulation loss scaling applied as engine.backward applies it.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tuner.workload.hf_causal_lm import build_model
from tuner.workload.long_seq import install_loss, tile_mlps

LLAMA = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 96}  # fmt: skip
ACCUM = 2


def grads(model: Any, batch: dict[str, torch.Tensor]) -> tuple[float, dict[str, torch.Tensor]]:
    loss = model(**batch).loss
    (loss / ACCUM).backward()  # engine.backward scales the loss by the accumulation steps
    return float(loss.detach()), {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize(("mlp_shards", "logit_shards"), [(3, None), (None, 3), (4, 5)])
def test_tiled_model_has_the_loss_and_gradients_of_the_whole(mlp_shards: int | None, logit_shards: int | None) -> None:
    ids = torch.randint(0, 96, (2, 24), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[0, :5] = -100  # a masked prompt: the mean is over the labelled tokens only
    batch = {"input_ids": ids, "labels": labels}
    whole_loss, whole = grads(build_model(LLAMA, seed=0), batch)
    tiled_model = build_model(LLAMA, seed=0)
    if mlp_shards:
        assert tile_mlps(tiled_model, mlp_shards) == 2  # one MLP per decoder layer
    if logit_shards:
        install_loss(tiled_model, logit_shards, None, ACCUM)
    tiled_loss, tiled = grads(tiled_model, batch)
    assert tiled_loss == pytest.approx(whole_loss, rel=1e-6)
    for name, grad in whole.items():
        torch.testing.assert_close(tiled[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_a_model_without_an_mlp_module_names_the_knob() -> None:
    with pytest.raises(ValueError, match=r"^tiled_mlp: Linear has no module named 'mlp'"):
        tile_mlps(torch.nn.Linear(2, 2), 2)
