"""The adapter finds y, W_U and b_U such that y @ W_U + b_U reproduces the logits, on every
model class and weight-processing setting."""

from __future__ import annotations

import pytest
import torch

import helpers
from jacobian_scopes.adapter import ModelAdapter
from jacobian_scopes.engine import Trace

PROCESSING = {
    "raw": None,
    "fold_ln": dict(fold_ln=True, center_writing_weights=False, center_unembed=False),
    "center_writing": dict(fold_ln=False, center_writing_weights=True, center_unembed=False),
    "center_unembed": dict(fold_ln=False, center_writing_weights=False, center_unembed=True),
    "all": dict(fold_ln=True, center_writing_weights=True, center_unembed=True),
}


def _model(kind, arch, processing):
    flags = PROCESSING[processing]
    if flags is None:
        return helpers.make_model(kind, arch)
    return helpers.processed_copy(kind, arch, **flags)


@pytest.mark.parametrize("processing", list(PROCESSING))
@pytest.mark.parametrize("arch", helpers.ARCHS)
def test_final_state_times_unembedding_reproduces_the_logits(kind, arch, processing):
    model = _model(kind, arch, processing)
    adapter = ModelAdapter(model)
    with Trace(adapter, helpers.tokens(9)[None], sources=[]) as tr:
        rebuilt = adapter.logits_from_state(tr.explanandum.detach())
        logits = tr.logits
    torch.testing.assert_close(rebuilt, logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", helpers.ARCHS)
def test_processing_state_reports_what_was_applied(kind, arch):
    raw = ModelAdapter(helpers.make_model(kind, arch)).processing_state()
    assert raw["fold_ln"] is False and raw["center_unembed"] is False
    assert raw["model_class"] in ("HookedTransformer", "TransformerBridge")
    done = ModelAdapter(_model(kind, arch, "all")).processing_state()
    assert done["fold_ln"] is True
    assert done["center_unembed"] is True
    # TransformerLens centres writing weights only where a LayerNorm reads them.
    assert done["center_writing_weights"] is (arch != "llama")


def test_adapter_refuses_models_that_are_not_transformerlens():
    with pytest.raises(TypeError, match="TransformerLens"):
        ModelAdapter(torch.nn.Linear(3, 3))


@pytest.mark.parametrize("arch", helpers.ARCHS)
def test_random_init_norm_is_constant_and_perturbed_is_not(kind, arch):
    assert not ModelAdapter(helpers.make_model(kind, arch)).final_norm_is_constant()
    assert ModelAdapter(_model(kind, arch, "fold_ln")).final_norm_is_constant()
