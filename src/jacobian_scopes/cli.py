"""The ``jacobian-scopes`` command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

import jacobian_scopes as js
from jacobian_scopes.casestudies import CASES, CaseStudy
from jacobian_scopes.results import ScopeResult


def _run_case(model: Any, case: CaseStudy) -> list[ScopeResult]:
    results = []
    if case.target is not None:
        results.append(js.semantic_scope(model, case.prompt, case.target))
    results.append(js.temperature_scope(model, case.prompt))
    results.append(js.fisher_scope(model, case.prompt))
    return results


def _summary(result: ScopeResult, k: int = 3) -> dict[str, Any]:
    return {
        "scope": result.scope,
        "target": None if result.target is None else "".join(result.target.tokens),
        "top_tokens": [{"index": i, "token": t, "score": s} for i, t, s in result.top(k)],
        "prediction": result.top_predictions[0].token,
        "fisher": None
        if result.fisher is None
        else {"method": result.fisher.method, "n_vjps": result.fisher.n_vjps},
    }


def demo(out: Path, console: Console) -> dict[str, Any]:
    started = time.perf_counter()
    with console.status("loading SmolLM2-135M-Instruct (first run: about a minute)"):
        model = js.load_default_model()
    loaded = time.perf_counter()
    report: dict[str, Any] = {"model": js.default_model.HF_NAME, "cases": []}
    for case in CASES:
        with console.status(f"{case.name}"):
            results = _run_case(model, case)
        table = Table(
            title=f"{case.name}: {case.prompt[:70]}{'…' if len(case.prompt) > 70 else ''}"
        )
        table.add_column("scope")
        table.add_column("top tokens (BOS left out)")
        for r in results:
            label = r.scope + (f" {''.join(r.target.tokens)!r}" if r.target else "")
            table.add_row(label, ", ".join(f"{t!r} {s:.3g}" for _, t, s in r.top(3)))
        console.print(table)
        report["cases"].append(
            {
                "name": case.name,
                "prompt": case.prompt,
                "expected": list(case.expected),
                "results": [_summary(r) for r in results],
            }
        )
    report["seconds"] = {"load": loaded - started, "total": time.perf_counter() - started}
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path = out.with_suffix(".json")
    json_path.write_text(json.dumps(report, indent=2, ensure_ascii=False))
    console.print(f"report written to {json_path}")
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jacobian-scopes",
        description="Token-level Jacobian Scopes for TransformerLens models.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="run the paper's case studies on the embedded default model")
    d.add_argument("--out", type=Path, default=Path("reports/demo.html"), help="report path")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console()
    if args.command == "demo":
        demo(args.out, console)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
