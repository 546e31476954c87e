"""The two AOPC protocols: ``"paper"`` (the authors' script: whole passage, no BOS, the
prediction at T − 2 explained, max(1, int(T·f)) of all T tokens deleted) and ``"default"``
(unchanged), checked by hand; bad protocol names and mixed-protocol results files refused."""

from __future__ import annotations

import json

import pytest
import torch

import helpers
from jacobian_scopes.errors import ScopeInputError
from jacobian_scopes.eval import evaluate
from jacobian_scopes.eval.methods import Method
from jacobian_scopes.eval.passages import Passage, load_lambada

# 20 words of the tiny word-level tokenizer: T = 20 tokens without BOS, 21 with it.
WORDS = (5, 17, 3, 40, 22, 9, 61, 12, 30, 8, 50, 44, 2, 71, 19, 33, 6, 27, 58, 11)
TEXT = " ".join(f"w{i}" for i in WORDS)
T = len(WORDS)
KW = {"random_baseline": False, "verbose": False}


def spy(seen: list, name: str = "spy", **flags) -> Method:
    """Records what it is given; scores the first token highest, then the second, ..."""

    def fn(model, tokens, target):
        seen.append((tokens[0].clone(), target))
        n = tokens.shape[1]
        return torch.arange(n, 0, -1).float()

    return Method(name, fn, **flags)


def logprob_at(model, ids, position, zeroed, token):
    def hook(x, hook):
        x = x.clone()
        x[:, list(zeroed)] = 0
        return x

    with torch.no_grad(), model.hooks(fwd_hooks=[("hook_embed", hook)]):
        logits = model(ids[None])[0, position]
    return float(torch.log_softmax(logits.double(), -1)[token])


def top1_at(model, ids, position):
    with torch.no_grad():
        return int(model(ids[None])[0, position].argmax())


# ------------------------------------------------------------------ protocol="paper"
def test_paper_explains_the_passage_last_token_at_t_minus_2_without_bos(kind):
    model = helpers.make_model(kind, "gpt2")
    ids = model.to_tokens(TEXT, prepend_bos=False)[0].cpu()
    assert len(ids) == T and int(ids[0]) != model.tokenizer.bos_token_id
    seen: list = []
    ev = evaluate.aopc(model, [TEXT], [spy(seen)], protocol="paper", **KW)
    given, target = seen[0]
    assert torch.equal(given.cpu(), ids[:-1])  # no BOS; the prediction of the last token
    assert target == int(ids[-1])  # the passage's own last token is explained
    row = ev.passages.iloc[0]
    assert (row["n_tokens"], row["n_ranked"], row["position"]) == (T, T, T - 2)
    top1 = top1_at(model, ids, T - 2)
    assert row["target"] == top1 and row["reference"] == int(ids[-1])
    assert row["base_logprob"] == pytest.approx(logprob_at(model, ids, T - 2, [], top1), abs=1e-5)
    assert ev.settings.protocol == "paper"


def test_paper_deletes_max_1_int_t_f_of_all_t_tokens(kind):
    model = helpers.make_model(kind, "llama")
    ids = model.to_tokens(TEXT, prepend_bos=False)[0].cpu()
    ev = evaluate.aopc(model, [TEXT], [spy([])], protocol="paper", **KW)
    rec = ev.records.iloc[0]
    top1 = top1_at(model, ids, T - 2)
    base = logprob_at(model, ids, T - 2, [], top1)
    deltas = []
    # T = 20 counts the last token: 1, 2, 4 deleted (of the 19 before it: 1, 1, 3)
    for f, k in zip((0.05, 0.1, 0.2), (1, 2, 4), strict=True):
        assert max(1, int(T * f)) == k == evaluate.n_deleted(f, T)
        deltas.append(logprob_at(model, ids, T - 2, range(k), top1) - base)
        assert rec[f"deletion@{f:g}"] == pytest.approx(deltas[-1], abs=1e-5)
    assert rec["aopc"] == pytest.approx(evaluate.trapezoid(deltas, (0.05, 0.1, 0.2)), abs=1e-5)
    assert deltas[1] != pytest.approx(deltas[0], abs=1e-4)  # the count matters here


def test_paper_ranks_the_last_token_too(kind):
    model = helpers.make_model(kind, "gpt2")
    seen: list = []
    everything = spy(seen, "everything", ignores_position=True)  # as the random order
    ev = evaluate.aopc(model, [TEXT], [spy([]), everything], protocol="paper", **KW)
    assert len(seen[0][0]) == T  # a random order may draw the last token, as the authors'
    assert ev.records["method"].tolist() == ["spy", "everything"]
    evaluate.aopc(model, [TEXT], [everything], **KW)
    assert len(seen[1][0]) == T + 1  # the default protocol's prompt: BOS + the text


def test_paper_scores_the_token_after_the_explained_position_zero(kind, tmp_path):
    model = helpers.make_model(kind, "gpt2")
    path = tmp_path / "paper.jsonl"
    evaluate.aopc(model, [TEXT], [spy([])], protocol="paper", results=path, **KW)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert records[0]["protocol"] == "paper"
    method = [r for r in records if r["type"] == "method"][-1]  # appended as it grows
    assert method["scores"] == [float(T - 1 - i) for i in range(T - 1)] + [0.0]


# ---------------------------------------------------------------- protocol="default"
def test_the_default_protocol_is_unchanged(kind):
    model = helpers.make_model(kind, "gpt2")
    bos_ids = model.to_tokens(TEXT)[0].cpu()
    assert len(bos_ids) == T + 1 and int(bos_ids[0]) == model.tokenizer.bos_token_id
    seen: list = []
    ev = evaluate.aopc(model, [TEXT], [spy(seen)], **KW)
    same = evaluate.aopc(model, [TEXT], [spy(seen)], protocol="default", **KW)
    cols = [c for c in ev.records if c != "seconds"]
    assert ev.records[cols].equals(same.records[cols]) and ev.settings == same.settings
    given, target = seen[0]
    top1 = top1_at(model, bos_ids, T)
    assert torch.equal(given.cpu(), bos_ids) and target == top1  # the top-1 after the prompt
    row = ev.passages.iloc[0]
    assert (row["n_tokens"], row["n_ranked"], row["position"]) == (T + 1, T, T)
    base = logprob_at(model, bos_ids, T, [], top1)
    rec = ev.records.iloc[0]
    # BOS (scored highest) is never deleted; n = the T tokens after it: 1, 2, 4 deleted
    for f, k in zip((0.05, 0.1, 0.2), (1, 2, 4), strict=True):
        expected = logprob_at(model, bos_ids, T, range(1, k + 1), top1) - base
        assert rec[f"deletion@{f:g}"] == pytest.approx(expected, abs=1e-5)
    assert ev.settings.protocol == "default" and not ev.settings.include_bos


# ---------------------------------------------------------------------- refused input
@pytest.mark.parametrize("bad", ["Paper", "authors", "", None, 1])
def test_unknown_protocols_are_refused(bad):
    model = helpers.make_model("hooked" if helpers.has_hooked() else "bridge", "gpt2")
    for run in (evaluate.evaluate, evaluate.aopc, evaluate.loo_agreement):
        with pytest.raises(
            ScopeInputError, match=r"protocol must be one of \['default', 'paper'\]"
        ):
            run(model, [TEXT], [spy([])], protocol=bad, verbose=False)


def test_paper_refuses_what_it_fixes(kind):
    model = helpers.make_model(kind, "gpt2")
    for extra in ({"include_bos": True}, {"include_bos": False}, {"explain": "top1"}):
        with pytest.raises(ScopeInputError, match="fixes include_bos and explain"):
            evaluate.aopc(model, [TEXT], [spy([])], protocol="paper", **extra, **KW)
    with pytest.raises(ScopeInputError, match="whole passages"):
        evaluate.aopc(model, [Passage("w5 w6 w7", " w8")], [spy([])], protocol="paper", **KW)
    with pytest.raises(ScopeInputError, match="at least 2 tokens"):
        evaluate.aopc(model, ["w5"], [spy([])], protocol="paper", **KW)


def test_a_results_file_is_resumed_only_under_its_protocol(kind, tmp_path):
    model = helpers.make_model(kind, "gpt2")
    path = tmp_path / "run.jsonl"
    evaluate.aopc(model, [TEXT], [spy([])], results=path, **KW)
    with pytest.raises(ScopeInputError, match="protocol: file 'default', now 'paper'"):
        evaluate.aopc(model, [TEXT], [spy([])], results=path, protocol="paper", **KW)
    # a file from before protocols existed was written under the default one
    lines = path.read_text().splitlines()
    config = json.loads(lines[0])
    del config["protocol"]
    path.write_text("\n".join([json.dumps(config), *lines[1:]]) + "\n")
    evaluate.aopc(model, [TEXT], [spy([])], results=path, **KW)
    with pytest.raises(ScopeInputError, match="protocol: file 'default', now 'paper'"):
        evaluate.aopc(model, [TEXT], [spy([])], results=path, protocol="paper", **KW)


def test_whole_lambada_passages():
    split = load_lambada(limit=3)
    whole = load_lambada(limit=3, whole=True)
    for s, w in zip(split, whole, strict=True):
        assert w.target is None and w.prompt == f"{s.prompt}{s.target}"
        assert w.key is not None and w.key != s.key


# ----------------------------------------------------------------------- real model
@pytest.mark.real
def test_paper_protocol_on_smollm_explains_inside_a_multi_token_final_word(smollm, tmp_path):
    import jacobian_scopes as js

    passages = load_lambada(limit=12, whole=True)
    split = load_lambada(limit=12)
    i = next(
        i
        for i, p in enumerate(split)
        if len(smollm.to_tokens(str(p.target), prepend_bos=False)[0]) > 1
    )
    ids = smollm.to_tokens(str(passages[i].prompt), prepend_bos=False)[0]
    assert int(ids[0]) != smollm.tokenizer.bos_token_id
    path = tmp_path / "paper.jsonl"
    ev = evaluate.aopc(smollm, [passages[i]], ["semantic"], protocol="paper", results=path, **KW)
    row = ev.passages.iloc[0]
    assert row["position"] == len(ids) - 2 and row["n_ranked"] == len(ids)
    word = smollm.to_tokens(str(split[i].target), prepend_bos=False)[0]
    assert row["explained"] == int(ids[-1]) == int(word[-1]) != int(word[0])
    # Semantic explains the raw logit of the passage's last token, from the tokens before it
    expected = js.semantic_scope(smollm, ids[:-1], int(ids[-1])).token_scores()
    assert js.semantic_scope(smollm, ids[:-1]).params["mode"] == "logit"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    rec = [r for r in lines if r["type"] == "method"][-1]
    assert rec["scores"][-1] == 0.0
    torch.testing.assert_close(torch.tensor(rec["scores"][:-1]), expected.float().cpu())
    assert rec["aopc"] < 0
