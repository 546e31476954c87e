"""Weight processing (fold_ln, center_writing_weights, center_unembed) leaves the log-prob
Semantic and Fisher scores unchanged, changes raw-logit scores (and says so in the
result), and makes the Temperature scope undefined (refused, never zeros)."""

from __future__ import annotations

import pytest
import torch

import helpers
import jacobian_scopes as js

FLAGS = {
    "fold_ln": dict(fold_ln=True, center_writing_weights=False, center_unembed=False),
    "center_writing_weights": dict(
        fold_ln=False, center_writing_weights=True, center_unembed=False
    ),
    "center_unembed": dict(fold_ln=False, center_writing_weights=False, center_unembed=True),
    "all": dict(fold_ln=True, center_writing_weights=True, center_unembed=True),
}


def close(a, b):
    torch.testing.assert_close(a.scores, b.scores, rtol=2e-3, atol=2e-4)


@pytest.mark.parametrize("flags", list(FLAGS))
@pytest.mark.parametrize("arch", helpers.ARCHS)
def test_logprob_semantic_and_fisher_are_invariant_to_weight_processing(kind, arch, flags):
    raw = helpers.make_model(kind, arch)
    done = helpers.processed_copy(kind, arch, **FLAGS[flags])
    t = helpers.tokens(7, seed=3)
    close(
        js.semantic_scope(raw, t, 11, mode="logprob"),
        js.semantic_scope(done, t, 11, mode="logprob"),
    )
    close(js.semantic_scope(raw, t, 11, foil=40), js.semantic_scope(done, t, 11, foil=40))
    close(
        js.fisher_scope(raw, t, method="exact", eps=0.0),
        js.fisher_scope(done, t, method="exact", eps=0.0),
    )


@pytest.mark.parametrize("arch", ["gpt2", "neox"])
def test_raw_logit_scores_change_with_centred_unembedding_and_the_result_records_it(kind, arch):
    raw = helpers.make_model(kind, arch)
    done = helpers.processed_copy(kind, arch, **FLAGS["center_unembed"])
    t = helpers.tokens(7, seed=3)
    a, b = js.semantic_scope(raw, t, 11), js.semantic_scope(done, t, 11)
    assert not torch.allclose(a.scores, b.scores, rtol=1e-3)
    assert a.processing["center_unembed"] is False and b.processing["center_unembed"] is True


@pytest.mark.parametrize("arch", helpers.ARCHS)
def test_temperature_is_refused_after_fold_ln(kind, arch):
    done = helpers.processed_copy(kind, arch, **FLAGS["fold_ln"])
    with pytest.raises(js.errors.TemperatureUndefinedError):
        js.temperature_scope(done, helpers.tokens(5))


@pytest.mark.parametrize("arch", helpers.ARCHS)
def test_temperature_still_works_when_only_the_unembedding_is_centred(kind, arch):
    raw = helpers.make_model(kind, arch)
    done = helpers.processed_copy(kind, arch, **FLAGS["center_unembed"])
    t = helpers.tokens(6)
    # centring W_U does not touch y, so ‖y‖ and its gradient are unchanged
    close(js.temperature_scope(raw, t), js.temperature_scope(done, t))


@pytest.mark.parametrize("arch", helpers.ARCHS)
def test_principal_fisher_depends_on_the_basis_of_y_unlike_the_exact_trace(kind, arch):
    """Folding rescales y by the final gain: F becomes GFG, whose top eigenvector is not the
    image of F's. The trace is basis-free; one eigen-direction of it is not (documented)."""
    raw = helpers.make_model(kind, arch)
    done = helpers.processed_copy(kind, arch, **FLAGS["fold_ln"])
    t = helpers.tokens(7, seed=3)
    a = js.fisher_scope(raw, t, method="principal", eps=0.0)
    b = js.fisher_scope(done, t, method="principal", eps=0.0)
    assert ((a.scores - b.scores).norm() / a.scores.norm()) > 0.05
    close(
        js.fisher_scope(raw, t, method="exact", eps=0.0),
        js.fisher_scope(done, t, method="exact", eps=0.0),
    )
