"""Tiny random-init models of several architectures on both model classes, and the
brute-force references the scopes are checked against.

Random-init norms have unit gains and zero biases, which makes ‖y‖ constant (the
Temperature scope would be rounding noise): the factories perturb them, and draw the
weights large enough that the next-token distribution is far from uniform.
"""

from __future__ import annotations

import copy
import logging
import os
import warnings
from collections.abc import Callable, Sequence

import torch
from tokenizers import Tokenizer, models, pre_tokenizers

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")
logging.getLogger("transformer_lens").setLevel(logging.ERROR)

VOCAB = 97
D_MODEL = 32
N_LAYERS = 2
N_HEADS = 4
N_CTX = 64
ARCHS = ("gpt2", "llama", "neox")


def has_hooked() -> bool:
    try:
        from transformer_lens import HookedTransformer  # noqa: F401
    except ImportError:
        return False
    return True


def has_bridge() -> bool:
    try:
        from transformer_lens.model_bridge import TransformerBridge  # noqa: F401
    except ImportError:
        return False
    return True


def model_kinds() -> list[str]:
    return [k for k, ok in (("hooked", has_hooked()), ("bridge", has_bridge())) if ok]


def make_tokenizer(n_vocab: int = VOCAB, extra: Sequence[str] = (), name: str = "tiny-test"):
    """A word-level tokenizer over "<bos> <eos> <pad> <unk>", the ``extra`` words, then
    "w0 w1 …" up to ``n_vocab``, built offline."""
    from transformers import PreTrainedTokenizerFast

    words = ["<bos>", "<eos>", "<pad>", "<unk>", *extra]
    words += [f"w{i}" for i in range(n_vocab - len(words))]
    tk = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        name_or_path=name,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        add_bos_token=True,
    )


def _perturb_norms(named_params, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in named_params:
            leaf = name.split(".")[-1]
            is_norm = any(s in name for s in ("ln", "norm"))
            if is_norm and leaf in ("w", "weight"):
                p.add_(0.3 * torch.randn(p.shape, generator=g))
            elif is_norm and leaf in ("b", "bias"):
                p.add_(0.1 * torch.randn(p.shape, generator=g))


def hf_config(arch: str):
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig

    if arch == "gpt2":
        return GPT2Config(
            vocab_size=VOCAB,
            n_positions=N_CTX,
            n_embd=D_MODEL,
            n_layer=N_LAYERS,
            n_head=N_HEADS,
            initializer_range=0.2,
            attn_pdrop=0.1,
            resid_pdrop=0.1,
            embd_pdrop=0.1,
        )
    if arch == "llama":
        return LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=D_MODEL,
            intermediate_size=64,
            num_hidden_layers=N_LAYERS,
            num_attention_heads=N_HEADS,
            num_key_value_heads=2,
            max_position_embeddings=N_CTX,
            initializer_range=0.2,
            tie_word_embeddings=False,
        )
    if arch == "neox":
        return GPTNeoXConfig(
            vocab_size=VOCAB,
            hidden_size=D_MODEL,
            intermediate_size=64,
            num_hidden_layers=N_LAYERS,
            num_attention_heads=N_HEADS,
            max_position_embeddings=N_CTX,
            use_parallel_residual=True,
            rotary_pct=0.5,
            initializer_range=0.2,
        )
    raise ValueError(arch)


_BRIDGE_NAMES = {
    "gpt2": "gpt2",
    "llama": "meta-llama/Llama-3.2-1B",
    "neox": "EleutherAI/pythia-70m",
}


def make_hf(arch: str, seed: int = 0, dtype: torch.dtype = torch.float32):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    hf = AutoModelForCausalLM.from_config(hf_config(arch))
    _perturb_norms(hf.named_parameters(), seed + 1)
    return hf.to(dtype).eval()


def make_bridge(arch: str, seed: int = 0, compat: dict | None = None, dtype=torch.float32, hf=None):
    from transformer_lens.model_bridge import TransformerBridge

    hf = make_hf(arch, seed, dtype) if hf is None else hf
    model = TransformerBridge.boot_transformers(
        _BRIDGE_NAMES[arch], hf_model=hf, tokenizer=make_tokenizer(), dtype=dtype
    )
    if compat is not None:
        model.enable_compatibility_mode(disable_warnings=True, **compat)
    return model


def hooked_config(arch: str, seed: int = 0):
    from transformer_lens import HookedTransformerConfig

    base = dict(
        n_layers=N_LAYERS,
        d_model=D_MODEL,
        d_head=D_MODEL // N_HEADS,
        n_heads=N_HEADS,
        d_mlp=64,
        n_ctx=N_CTX,
        d_vocab=VOCAB,
        act_fn="gelu",
        seed=seed,
        initializer_range=0.2,
    )
    extra = {
        "gpt2": dict(normalization_type="LN", positional_embedding_type="standard"),
        "llama": dict(
            normalization_type="RMS",
            positional_embedding_type="rotary",
            act_fn="silu",
            gated_mlp=True,
            n_key_value_heads=2,
            rotary_dim=8,
            final_rms=True,
        ),
        "neox": dict(
            normalization_type="LN",
            positional_embedding_type="rotary",
            parallel_attn_mlp=True,
            rotary_dim=4,
        ),
    }[arch]
    return HookedTransformerConfig(**{**base, **extra})


def make_hooked(arch: str, seed: int = 0, process: dict | None = None, tokenizer=True, dtype=None):
    from transformer_lens import HookedTransformer

    cfg = hooked_config(arch, seed)
    model = HookedTransformer(cfg, tokenizer=make_tokenizer() if tokenizer else None)
    _perturb_norms(model.named_parameters(), seed + 1)
    if process is not None:
        model.process_weights_(**process)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()


def make_model(kind: str, arch: str, seed: int = 0):
    return make_hooked(arch, seed) if kind == "hooked" else make_bridge(arch, seed)


def processed_copy(kind: str, arch: str, seed: int = 0, **flags):
    """The same weights as make_model(kind, arch, seed), with weight processing applied."""
    if kind == "hooked":
        return make_hooked(arch, seed, process=flags)
    return make_bridge(arch, seed, compat=flags)


def tokens(n: int = 7, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    body = torch.randint(4, VOCAB, (n - 1,), generator=g)
    return torch.cat([torch.tensor([0]), body])  # BOS first, like to_tokens


# ------------------------------------------------------------------ brute force
def final_state_fn(
    model, toks: torch.Tensor, src: str = "hook_embed"
) -> tuple[Callable, torch.Tensor]:
    """(f, a0): f maps the activation at ``src`` (pos, ...) to y at every position (pos, d).

    y is read with a plain torch pre-hook on ``model.unembed`` (independent of the
    library's adapter), and the activation is *replaced* through a hook, so f is the
    network itself, differentiated by torch.autograd.functional.jacobian.
    """
    base = {}

    def grab(x, hook):
        base["a"] = x.detach().clone()

    with model.hooks(fwd_hooks=[(src, grab)]):
        model(toks[None])

    def f(a):
        out = {}

        def pre(mod, args):
            out["y"] = args[0]

        handle = model.unembed.register_forward_pre_hook(pre)
        try:
            with model.hooks(fwd_hooks=[(src, lambda x, hook: a[None].to(x.dtype))]):
                model(toks[None])
        finally:
            handle.remove()
        return out["y"][0]

    return f, base["a"][0]


def brute_jacobian(model, toks, src: str = "hook_embed", position: int = -1):
    """J[i, t, ...] = ∂y_position[i] / ∂a[t, ...] for the activation a at ``src``."""
    f, a0 = final_state_fn(model, toks, src)
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        J = torch.autograd.functional.jacobian(lambda a: f(a)[position], a0.double().to(a0.dtype))
        y = f(a0).detach()
    finally:
        for p, fl in zip(params, flags, strict=True):
            p.requires_grad_(fl)
    return J.double(), y


def pulled(J: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """J_tᵀ v for every token: (pos, ...)."""
    return torch.einsum("i,i...->...", v.double(), J)


def dense_fisher(W_U: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    W = W_U.double()
    p = p.double()
    return W @ torch.diag(p) @ W.T - torch.outer(W @ p, W @ p)


def fisher_trace(J: torch.Tensor, F: torch.Tensor) -> torch.Tensor:
    """tr(J_tᵀ F J_t) for every token, J of shape (d, pos, d_in)."""
    return torch.einsum("itk,ij,jtk->t", J, F, J)


def clone_model(model):
    return copy.deepcopy(model)


def warmed_model(kind: str, arch: str = "gpt2"):
    """A tiny model after one forward pass: the Bridge adds torch hooks of its own on its
    first forward, so a fingerprint taken afterwards sees the model as users hold it."""
    model = make_model(kind, arch)
    with torch.no_grad():
        model(tokens(3)[None])
    return model
