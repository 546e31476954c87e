"""A hand-built one-layer GPT-2 whose next-token prediction provably depends on one token.

The vocabulary of tests/helpers.py is split into two *carriers* and *fillers*. Every
embedding has zero mean over its 8 dimensions, so the LayerNorms only rescale it:

* dim 0 is 0 for every token; ``ln_1``'s bias puts a constant 1 there, which the query
  reads: every position asks the same question.
* dim 1 is 3 for a carrier and 0 for a filler; the key reads it (×10 on both sides), so the
  attention score is ≈ 80 on a carrier and exactly 0 on any filler (and on a zeroed
  embedding, whose LayerNorm output is the bias alone). Softmax puts weight ≈ 1 on the
  carrier.
* dim 2 is +1 (carrier A) or −1 (carrier B) and 0 for fillers; the value reads it and the
  output projection writes 5× it into the residual stream's dim 2 at the attending position.
* dims 3–7 are filler noise (and the carriers' mean-zero padding).

The MLP and positional embeddings are zero, and the unembedding reads dim 2 only:
``logit(OUT_A) = 3·y₂``, ``logit(OUT_B) = −3·y₂``, every other logit 0. So with carrier A
anywhere in the prompt the model predicts OUT_A (p ≈ 0.96); zeroing the carrier's embedding
sends y₂ to 0 and p(OUT_A) to 1/97 (Δ log p ≈ −4.5), while zeroing a filler changes neither
attention nor values (only the last token's own filler noise enters the final norm).
"""

from __future__ import annotations

import torch

import helpers

CARRIER_A, CARRIER_B = 10, 11  # "w6", "w7"
OUT_A, OUT_B = 20, 21  # "w16", "w17"
FILLERS = list(range(30, 90))
D = 8


def _embeddings(vocab: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    emb = torch.zeros(vocab, D)
    noise = torch.randn(vocab, D - 3, generator=g)
    emb[:, 3:] = noise - noise.mean(1, keepdim=True)  # zero-mean filler noise
    for token, sign in ((CARRIER_A, 1.0), (CARRIER_B, -1.0)):
        emb[token] = 0.0
        emb[token, 1] = 3.0
        emb[token, 2] = sign
        emb[token, 3:] = -(3.0 + sign) / (D - 3)  # keep the mean at zero
    return emb


def make_hf():
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=helpers.VOCAB,
        n_positions=helpers.N_CTX,
        n_embd=D,
        n_layer=1,
        n_head=1,
        n_inner=4 * D,
        tie_word_embeddings=False,
        attn_pdrop=0.0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
    )
    hf = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.zero_()
        t = hf.transformer
        t.wte.weight.copy_(_embeddings(helpers.VOCAB))
        block = t.h[0]
        for ln in (block.ln_1, block.ln_2, t.ln_f):
            ln.weight.fill_(1.0)
        block.ln_1.bias[0] = 1.0  # the constant the query reads
        # A final-norm gain and bias off the read-out dimension: the logits are unchanged,
        # but ‖y‖ now depends on the input, so the Temperature scope is defined.
        t.ln_f.weight[3:] = 1.5
        t.ln_f.bias[4] = 0.5
        W = block.attn.c_attn.weight  # (d, 3d): x @ W = [q | k | v]
        W[0, 0] = 10.0  # q_0 = 10 · LN(x)_0 = 10
        W[1, D + 0] = 10.0  # k_0 = 10 · LN(x)_1
        W[2, 2 * D + 2] = 1.0  # v_2 = LN(x)_2
        block.attn.c_proj.weight[2, 2] = 5.0
        hf.lm_head.weight[OUT_A, 2] = 3.0
        hf.lm_head.weight[OUT_B, 2] = -3.0
    return hf


def make_toy(kind: str):
    """The toy model as a TransformerBridge or a HookedTransformer (same weights)."""
    hf = make_hf()
    if kind == "bridge":
        from transformer_lens.model_bridge import TransformerBridge

        return TransformerBridge.boot_transformers(
            "gpt2", hf_model=hf, tokenizer=helpers.make_tokenizer()
        )
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights

    cfg = HookedTransformerConfig(
        n_layers=1,
        d_model=D,
        d_head=D,
        n_heads=1,
        d_mlp=4 * D,
        n_ctx=helpers.N_CTX,
        d_vocab=helpers.VOCAB,
        act_fn="gelu_new",
        normalization_type="LN",
        positional_embedding_type="standard",
    )
    model = HookedTransformer(cfg, tokenizer=helpers.make_tokenizer())
    model.load_state_dict(convert_gpt2_weights(hf, cfg), strict=False)
    return model.eval()


def prompts(n: int = 8, length: int = 20, seed: int = 0) -> list[tuple[torch.Tensor, int, int]]:
    """(tokens, carrier position, expected prediction): BOS, fillers, one carrier, never last."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        body = torch.tensor(FILLERS)[torch.randint(len(FILLERS), (length - 1,), generator=g)]
        where = int(torch.randint(1, length - 1, (1,), generator=g))
        carrier = CARRIER_A if i % 2 == 0 else CARRIER_B
        toks = torch.cat([torch.tensor([0]), body])
        toks[where] = carrier
        out.append((toks, where, OUT_A if carrier == CARRIER_A else OUT_B))
    return out
