"""The demo: the paper's case studies (SCOPES.md §7) with all three scopes, and the model's
own continuation of a generated Lorenz-63 series attributed token by token.

:func:`build_report` computes everything (one batch per scope for all cases, then one
generation); :func:`write_report` writes the report files; :func:`summary_tables` renders
the terminal summary. The report is a plain dict of results that :func:`jacobian_scopes.load`
reads back.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

from jacobian_scopes.casestudies import CASES, CaseStudy, lorenz_series, series_prompt
from jacobian_scopes.generation import generate_scope
from jacobian_scopes.results import GenerationResult, ScopeResult
from jacobian_scopes.scopes import fisher_scope, semantic_scope, temperature_scope
from jacobian_scopes.text import token_label

SCOPE_ORDER = ("semantic", "temperature", "fisher")
LORENZ_CONTEXT = 40  # values in the prompt (as in casestudies.CASES)
LORENZ_GENERATED = 12  # tokens the model generates (4 values of "dd,")


def explains(result: ScopeResult) -> str:
    """What a result explains, in words: its target, or the prediction it is about."""
    if result.target is not None:
        return f"{result.target.mode} of {''.join(result.target.tokens)!r}"
    return f"prediction {result.top_predictions[0].token!r}"


def word_rank(result: ScopeResult, word: str) -> tuple[int, str] | None:
    """Best 1-based rank (BOS left out) among the tokens that spell ``word`` in the prompt,
    and that token; None if the word is not in the prompt.

    The paper lists Llama-3's tokens (" lent", "ille"); other tokenizers split the same
    word differently, so the demo looks for the word: the tokens whose characters overlap
    its first occurrence.

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.demo import word_rank
        >>> model = js.load_default_model()
        >>> word_rank(js.semantic_scope(model, "The capital of France is", " Paris"), "France")
        (3, ' France')
    """
    pieces = result.str_tokens[1:] if result.bos else result.str_tokens
    offset = 1 if result.bos else 0
    text = "".join(pieces)
    start = text.find(word)
    if start < 0:
        return None
    stop = start + len(word)
    members, pos = set(), 0
    for i, piece in enumerate(pieces):
        if pos < stop and pos + len(piece) > start:
            members.add(i + offset)
        pos += len(piece)
    for rank, (index, token, _) in enumerate(result.top(result.n_tokens), start=1):
        if index in members:
            return rank, token
    return None


def summarise(case: CaseStudy, result: ScopeResult, k: int = 3) -> dict[str, Any]:
    top = result.top(k)
    summary: dict[str, Any] = {
        "case": case.name,
        "scope": result.scope,
        "paper_scope": result.scope == case.scope,
        "explains": explains(result),
        "prediction": result.top_predictions[0].token,
        "top": [{"index": i, "token": t, "score": s} for i, t, s in top],
    }
    if result.scope == case.scope and case.expected:
        word = "".join(case.expected).strip()
        found = word_rank(result, word)
        summary["expected"] = {
            "word": word,
            "rank": None if found is None else found[0],
            "token": None if found is None else found[1],
        }
    return summary


def run_cases(
    model: Any, cases: tuple[CaseStudy, ...] = CASES, progress: bool = False
) -> list[dict[str, Any]]:
    """Every case with every scope: one batched call per scope over all cases. Cases
    without a Semantic target (translation, time series) explain the model's own top
    prediction."""
    prompts = [c.prompt for c in cases]
    by_scope = {
        "semantic": semantic_scope(model, prompts, [c.target for c in cases], verbose=progress),
        "temperature": temperature_scope(model, prompts, verbose=progress),
        "fisher": fisher_scope(model, prompts, verbose=progress),
    }
    runs = []
    for i, case in enumerate(cases):
        results = {scope: by_scope[scope][i] for scope in SCOPE_ORDER}
        runs.append(
            {
                "name": case.name,
                "prompt": case.prompt,
                "paper_scope": case.scope,
                "expected": list(case.expected),
                "results": results,
                "summary": [summarise(case, results[s]) for s in SCOPE_ORDER],
            }
        )
    return runs


def run_generation(
    model: Any, n_tokens: int = LORENZ_GENERATED, progress: bool = False
) -> dict[str, Any]:
    """The model continues the Lorenz series; the Temperature scope (the paper's scope for
    time series) attributes every generated token to the series and to what it generated
    before. The true continuation of the series is kept for comparison."""
    values = lorenz_series(LORENZ_CONTEXT + n_tokens)
    prompt = series_prompt(values[:LORENZ_CONTEXT])
    result = generate_scope(model, prompt, n_tokens, "temperature", verbose=progress)
    return {
        "prompt": prompt,
        "result": result,
        "continuation": "".join(result.generated_tokens),
        # the same number of characters (SmolLM2 writes one digit or comma per token)
        "true_continuation": series_prompt(values[LORENZ_CONTEXT:])[
            : len("".join(result.generated_tokens))
        ],
    }


def build_report(
    model: Any, *, n_generate: int = LORENZ_GENERATED, progress: bool = False
) -> dict[str, Any]:
    """Everything the demo shows, as a dict that :func:`jacobian_scopes.save` can write.

    Example:
        >>> import jacobian_scopes as js
        >>> from jacobian_scopes.demo import build_report
        >>> report = build_report(js.load_default_model())   # doctest: +SKIP
        >>> report["cases"][2]["summary"][0]["top"][0]["token"]   # doctest: +SKIP
        ' Columbia'
    """
    from jacobian_scopes.adapter import ModelAdapter

    started = time.perf_counter()
    cases = run_cases(model, progress=progress)
    cases_done = time.perf_counter()
    generation = run_generation(model, n_generate, progress=progress) if n_generate > 0 else None
    return {
        "model": ModelAdapter(model).name,
        "cases": cases,
        "generation": generation,
        "seconds": {
            "cases": cases_done - started,
            "generation": time.perf_counter() - cases_done,
        },
    }


def write_report(report: dict[str, Any], out: Path) -> list[Path]:
    """Write the report as ``out`` with the suffix ``.html`` (one offline page) and
    ``.json`` (every result, exactly; :func:`jacobian_scopes.load` reads it back).
    Returns the paths written."""
    from jacobian_scopes.io import save

    return [write_html(report, out.with_suffix(".html")), save(report, out.with_suffix(".json"))]


def write_html(report: dict[str, Any], path: Path) -> Path:
    """The report as one offline HTML page: a section per case (its three scopes, and the
    series figure for the time series), then the generation heat map."""
    from jacobian_scopes.viz.plots import plot_series
    from jacobian_scopes.viz.report import save_html

    sections: list[Any] = [
        f"Model: {report['model']}. Each case is explained by all three scopes; the paper's "
        "choice is marked. BOS is left out of every colour scale. The full results are in "
        "the JSON file next to this page (jacobian_scopes.load reads it).",
    ]
    for case in report["cases"]:
        # Each result's view names its scope and what it explains.
        views: list[Any] = [f"{case['prompt']!r} (the paper shows the {case['paper_scope']} scope)"]
        views.extend(case["results"][scope] for scope in SCOPE_ORDER)
        if case["paper_scope"] == "temperature":
            # A prompt without numbers (a test model's <unk> tokens) has no series to plot.
            with contextlib.suppress(ValueError):
                views.append(plot_series(case["results"]["temperature"]))
        sections.append((case["name"], views))
    generation = report.get("generation")
    if generation is not None:
        result = generation["result"]
        text = (
            f"The model continues the Lorenz series: {generation['continuation']!r} "
            f"(the series itself goes on {generation['true_continuation']!r})."
        )
        sections.append(("Lorenz-63: attribution across generation", [text, result.view()]))
    save_html(path, *sections, title="Jacobian Scopes: the paper's case studies")
    return path


# --------------------------------------------------------------------------- terminal
def summary_tables(report: dict[str, Any], k: int = 3) -> list[Any]:
    """Rich renderables: one table per case, and the generation's table."""
    from rich.table import Table
    from rich.text import Text

    tables: list[Any] = []
    for case in report["cases"]:
        prompt = case["prompt"]
        short = prompt if len(prompt) <= 72 else prompt[:71] + "…"
        # Text everywhere: tokens such as "[INST]" must not be read as rich markup.
        table = Table(title=Text(f"{case['name']}: {short!r}"), title_justify="left")
        table.add_column("scope")
        table.add_column("explains")
        table.add_column(f"top {k} tokens (BOS left out)")
        table.add_column("paper's word: best rank")
        for s in case["summary"]:
            scope = s["scope"] + (" (paper)" if s["paper_scope"] else "")
            top = ", ".join(f"{t['token']!r} {t['score']:.3g}" for t in s["top"][:k])
            expected = s.get("expected")
            found = ""
            if expected:
                word, rank = expected["word"], expected["rank"]
                found = f"{word!r}: " + (f"#{rank} ({expected['token']!r})" if rank else "–")
            table.add_row(scope, Text(s["explains"]), Text(top), Text(found))
        tables.append(table)
    generation = report.get("generation")
    if generation is not None:
        tables.append(generation_table(generation["result"], k))
        tables.append(
            Text(
                f"model's continuation: {generation['continuation']!r}\n"
                f"true continuation:    {generation['true_continuation']!r}"
            )
        )
    return tables


def generation_table(result: GenerationResult, k: int = 3, max_rows: int = 24) -> Any:
    from rich.table import Table
    from rich.text import Text

    table = Table(
        title=Text(f"{result.scope} scope across generation ({result.n_generated} tokens)"),
        title_justify="left",
    )
    table.add_column("#", justify="right")
    table.add_column("generated")
    table.add_column("p", justify="right")
    table.add_column(f"top {k} context tokens (position: token score)")
    for i in range(min(result.n_generated, max_rows)):
        top = ", ".join(
            f"{t}:{token_label(result.str_tokens, t)} {s:.3g}" for t, _, s in result.top(i, k)
        )
        token = Text(repr(result.generated_tokens[i]))
        table.add_row(str(i), token, f"{result.token_probs[i]:.2f}", Text(top))
    return table
