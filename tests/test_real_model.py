"""The scopes on the real SmolLM2-135M-Instruct (offline): the paper's effects and the
invariants of SCOPES.md."""

from __future__ import annotations

import pytest
import torch

import jacobian_scopes as js
from jacobian_scopes.adapter import ModelAdapter
from jacobian_scopes.engine import Trace

pytestmark = pytest.mark.real

BIAS = "Tom loves Korean food. He grew up in the South and goes to Columbia. He is a"


def test_default_model_predicts_paris(smollm):
    r = js.semantic_scope(smollm, "The capital of France is", " Paris")
    assert r.top_predictions[0].token == " Paris"
    assert r.str_tokens[0] == "<|im_start|>" and r.bos


def test_final_state_reproduces_the_logits(smollm):
    adapter = ModelAdapter(smollm)
    with Trace(adapter, smollm.to_tokens(BIAS), sources=[]) as tr:
        rebuilt = adapter.logits_from_state(tr.explanandum.detach())
        torch.testing.assert_close(rebuilt, tr.logits, atol=2e-4, rtol=1e-4)


def test_columbia_tops_the_semantic_scope_for_liberal(smollm):
    r = js.semantic_scope(smollm, BIAS, " liberal")
    assert r.top(1)[0][1] == " Columbia"


def test_fisher_decomposition_matches_per_candidate_logprob_scopes(smollm):
    prompt = "The capital of France is"
    r = js.fisher_scope(smollm, prompt, method="exact", eps=0.05, decompose=True)
    c = r.fisher.contributions
    torch.testing.assert_close(c.sum(0), r.scores, rtol=1e-5, atol=1e-7)
    # each candidate's row is p_j ‖∂ log p_j/∂x_t‖², which the Semantic log-prob scope gives
    for row in range(3):
        j = r.fisher.candidate_ids[row]
        sem = js.semantic_scope(smollm, prompt, j, mode="logprob").scores
        torch.testing.assert_close(
            c[row], r.fisher.candidate_probs[row] * sem.pow(2), rtol=2e-3, atol=1e-6
        )


def test_sketch_agrees_with_exact_within_its_standard_error(smollm):
    prompt = "The capital of France is"
    exact = js.fisher_scope(smollm, prompt, method="exact", eps=1e-3)
    sketch = js.fisher_scope(smollm, prompt, rank=8, n_probes=24, eps=1e-3, seed=1)
    gap = (sketch.scores - exact.scores).abs()
    assert (gap <= 5 * sketch.fisher.stderr + 1e-6 * exact.scores.max()).all()
    principal = js.fisher_scope(smollm, prompt, method="principal", rank=4, eps=1e-3)
    assert (principal.scores <= exact.scores * (1 + 1e-4) + 1e-7).all()


def test_later_tokens_cannot_influence_an_earlier_prediction(smollm):
    r = js.temperature_scope(smollm, BIAS, position=8)
    assert (r.scores[9:] == 0).all() and (r.scores[:9] > 0).all()


def test_translation_source_word_lights_up_in_the_fisher_scope(smollm):
    r = js.fisher_scope(
        smollm, "French: Nous l'appelons lentille jacobienne. English: We call it Jacobian"
    )
    top = [tok for _, tok, _ in r.top(4)]
    assert {" lent", "ille", " jac", "ob", "ienne"} & set(top), top


@pytest.fixture(scope="module")
def smollm_hooked():
    import helpers

    if not helpers.has_hooked():
        pytest.skip("this TransformerLens has no HookedTransformer")
    return js.load_default_model(model_class="hooked")


def test_both_model_classes_give_the_same_scores_on_the_real_model(smollm, smollm_hooked):
    if type(smollm).__name__ == type(smollm_hooked).__name__:
        pytest.skip("only one model class in this TransformerLens")
    for call in (
        lambda m: js.semantic_scope(m, BIAS, " liberal"),
        lambda m: js.temperature_scope(m, BIAS),
        lambda m: js.fisher_scope(m, BIAS, method="principal"),
    ):
        a, b = call(smollm), call(smollm_hooked)
        torch.testing.assert_close(a.scores, b.scores, rtol=1e-4, atol=1e-4 * float(a.scores.max()))


def test_processing_leaves_logprob_and_fisher_unchanged_on_the_real_model(smollm_hooked):
    import copy

    prompt = "The capital of France is"
    processed = copy.deepcopy(smollm_hooked)
    processed.process_weights_(fold_ln=True, center_writing_weights=False, center_unembed=True)
    assert processed.cfg.normalization_type == "RMSPre"
    for call in (
        lambda m: js.semantic_scope(m, prompt, " Paris", mode="logprob"),
        lambda m: js.fisher_scope(m, prompt, method="exact", eps=0.05),
    ):
        a, b = call(smollm_hooked), call(processed)
        torch.testing.assert_close(a.scores, b.scores, rtol=2e-3, atol=1e-3 * float(a.scores.max()))
    raw = js.semantic_scope(smollm_hooked, prompt, " Paris")
    assert js.semantic_scope(processed, prompt, " Paris").processing["center_unembed"]
    assert not raw.processing["center_unembed"]
    with pytest.raises(js.errors.TemperatureUndefinedError):
        js.temperature_scope(processed, prompt)
