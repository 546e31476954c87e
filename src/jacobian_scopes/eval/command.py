"""The ``jacobian-scopes evaluate`` command: the faithfulness study from the shell.

It runs :func:`~jacobian_scopes.eval.evaluate.evaluate` on the LAMBADA passages shipped with
the package (or a file of the same format) and prints the summary. Under ``torchrun`` the
passages are shared out among the processes (see :mod:`jacobian_scopes.eval.distributed`)::

    torchrun --nproc_per_node 2 -m jacobian_scopes evaluate --passages 200 --results faith.jsonl
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jacobian_scopes.errors import ScopeInputError

__all__ = ["add_evaluate_command"]  # run_evaluate is the CLI's


def add_evaluate_command(
    sub: Any, model_arguments: Callable[[argparse.ArgumentParser], None]
) -> argparse.ArgumentParser:
    """Add ``evaluate`` to the ``jacobian-scopes`` subcommands.

    Example:
        >>> import argparse
        >>> from jacobian_scopes.eval.command import add_evaluate_command
        >>> parser = argparse.ArgumentParser()
        >>> e = add_evaluate_command(parser.add_subparsers(dest="command"), lambda p: None)
        >>> args = parser.parse_args(["evaluate", "--passages", "3", "--protocol", "paper"])
        >>> args.passages, args.protocol, args.metrics
        (3, 'paper', ['aopc'])
    """
    from jacobian_scopes.eval.evaluate import METRICS, PROTOCOLS

    e = sub.add_parser(
        "evaluate",
        help="how faithful each scope and baseline is on LAMBADA passages (AOPC, ERASER, LOO)",
        description="Deletion AOPC (and ERASER, leave-one-out) of the scopes and baselines on "
        "the LAMBADA passages shipped with the package. Resumable with --results; under "
        "torchrun the passages are shared out among the processes.",
    )
    model_arguments(e)
    e.add_argument(
        "--passages", type=int, default=None, metavar="N", help="the first N (default: all 200)"
    )
    e.add_argument("--data", type=Path, default=None, help="a JSON list of {'text': ...}")
    e.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="default",
        help="default: the passage without its last word, BOS kept and never deleted; paper: "
        "the authors' (whole passage, no BOS, its last token explained)",
    )
    e.add_argument("--methods", nargs="+", default=None, metavar="NAME", help="default: all")
    e.add_argument("--metrics", nargs="+", choices=METRICS, default=["aopc"])
    e.add_argument("--results", type=Path, default=None, help="resumable JSONL results file")
    e.add_argument("--csv", type=Path, default=None, help="write the summary as CSV")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    return e


def run_evaluate(args: argparse.Namespace, console: Any, load: Callable[..., Any]) -> int:
    """The ``evaluate`` command; ``load(spec, device, console)`` loads the model."""
    from rich.table import Table

    from jacobian_scopes.eval.distributed import local_device, torchrun_ranks
    from jacobian_scopes.eval.evaluate import evaluate
    from jacobian_scopes.eval.passages import LAMBADA_200, load_lambada

    if args.passages is not None and args.passages < 1:
        raise ScopeInputError(f"--passages must be at least 1, got {args.passages}")
    try:
        passages = load_lambada(
            args.data or LAMBADA_200, limit=args.passages, whole=args.protocol == "paper"
        )
    except (OSError, ValueError) as exc:
        raise ScopeInputError(f"cannot read passages: {exc}") from exc
    ranks = torchrun_ranks()
    # Under torchrun each rank's model goes to its own GPU (or shares one round-robin).
    device = args.device or (str(local_device()) if ranks is not None else None)
    model = load(args.model, device, console)
    ev = evaluate(
        model,
        passages,
        args.methods,
        metrics=args.metrics,
        protocol=args.protocol,
        seed=args.seed,
        results=args.results,
        verbose=not args.quiet,
    )
    if ranks is not None and ranks.rank != 0:
        return 0  # rank 0 reports for all
    summary = ev.summary()
    table = Table(title=f"faithfulness · {len(passages)} passages · protocol {args.protocol}")
    table.add_column("method")
    columns = [c for c in summary.columns if c == "n" or not c.endswith(("_low", "_high"))]
    for column in columns:
        table.add_column(column, justify="right")
    for method, row in summary.iterrows():
        table.add_row(str(method), *(f"{row[c]:.3g}" for c in columns))
    console.print(table)
    if args.csv is not None:
        summary.to_csv(args.csv)
        console.print(f"wrote {args.csv}")
    return 0
