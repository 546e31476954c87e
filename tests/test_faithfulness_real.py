"""Baselines and the deletion metric on the real SmolLM2-135M-Instruct (offline)."""

from __future__ import annotations

import math

import pytest
import torch

import jacobian_scopes as js
from jacobian_scopes.eval import baselines, evaluate
from jacobian_scopes.eval.methods import Method
from jacobian_scopes.guard import model_fingerprint
from test_model_unchanged import assert_same

pytestmark = [pytest.mark.real, pytest.mark.slow]

PROMPT = "The capital of France is"


def test_baselines_on_the_real_model(smollm):
    with torch.no_grad():  # the Bridge adds hooks of its own on its first forward
        smollm(smollm.to_tokens(PROMPT))
    before = model_fingerprint(smollm)
    gn = baselines.gradient_norm(smollm, PROMPT)
    assert gn.target.tokens == [" Paris"]
    same = js.semantic_scope(smollm, PROMPT, " Paris", mode="logprob")
    assert torch.equal(gn.scores, same.scores)
    att = baselines.attention(smollm, PROMPT, method="rollout")
    assert att.scores.sum() == pytest.approx(1.0, abs=1e-4)
    occ = baselines.occlusion(smollm, PROMPT)
    assert occ.top(1)[0][1] in (" France", " capital")
    ig = baselines.integrated_gradients(smollm, PROMPT, n_steps=4)
    c = ig.params["completeness"]
    assert c["f_input"] == pytest.approx(math.log(gn.top_predictions[0].prob), abs=1e-4)
    assert c["f_input"] > c["f_baseline"]  # " Paris" needs the prompt
    assert_same(before, model_fingerprint(smollm))


def test_deleting_what_occlusion_ranks_first_hurts_more_than_random(smollm):
    prompts = [
        "The capital of France is",
        "Tom loves Korean food. He grew up in the South and goes to Columbia. He is a",
    ]
    occ = Method("occlusion", lambda m, t, y: baselines.occlusion(m, t, y), leave_one_out=True)
    ev = evaluate.aopc(smollm, prompts, [occ], verbose=False)
    s = ev.summary(n_boot=100)
    assert s.loc["occlusion", "aopc"] < s.loc["random", "aopc"]
    assert (ev.passages["n_ranked"] == ev.passages["n_tokens"] - 1).all()  # BOS kept
