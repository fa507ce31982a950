"""The models split learning can cut: their ordered blocks compose to the model's forward pass, the
block counts config_split.py knows match the built networks, and the parts' keys map back to the
whole model's."""

from __future__ import annotations

import pytest
import torch

from medfed.config_split import SPLIT_BLOCKS
from medfed.errors import ConfigError
from medfed.models import ModelSpec, build_model
from medfed.models.blocks import HEAD, MIDDLE, TAIL, SplitLayout, model_blocks

SPECS = {"cnn": (ModelSpec(2, 1, 1, "batch"), (3, 1, 16, 16)),
         "mlp": (ModelSpec(0, 6, 2, "batch"), (3, 6))}


@pytest.mark.parametrize("name", sorted(SPLIT_BLOCKS))
def test_blocks_compose_to_forward_and_parts_cover_the_state(name):
    spec, shape = SPECS[name]
    model = build_model(name, spec, seed=0).eval()
    blocks = model_blocks(model)
    assert blocks is not None and len(blocks) == SPLIT_BLOCKS[name]
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    y = x
    for block in blocks:
        y = block(y)
    torch.testing.assert_close(y, model(x))
    layout = SplitLayout.of(model, 2, 1)
    assert sorted(layout.to_whole.values()) == sorted(model.state_dict())
    parts = layout.parts
    torch.testing.assert_close(parts[TAIL](parts[MIDDLE](parts[HEAD](x))), model(x))


def test_a_model_without_blocks_and_a_cut_too_deep_are_refused():
    resnet = build_model("resnet18", ModelSpec(2, 1, 1, "batch"), seed=0)
    with pytest.raises(ConfigError, match="ordered list of blocks"):
        SplitLayout.of(resnet, 1, 1)
    cnn = build_model("cnn", ModelSpec(2, 1, 1, "batch"), seed=0)
    with pytest.raises(ConfigError, match="leave one for the server"):
        SplitLayout.of(cnn, 5, 5)
