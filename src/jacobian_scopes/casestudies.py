"""The paper's case studies (SCOPES.md §7) as data, and the Lorenz-63 series they use.

Each case names the prompt, the token the paper explains (for Semantic), and which scope
the paper shows. The demo, the tutorials and the tests draw on these.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CaseStudy:
    name: str
    prompt: str
    scope: str  # the scope the paper uses for it
    target: str | None = None  # Semantic target (the next token)
    expected: tuple[str, ...] = ()  # tokens the paper reports lighting up


def lorenz_series(
    n: int = 60,
    dt: float = 0.03,
    sigma: float = 10.0,
    rho: float = 28.0,
    beta: float = 8.0 / 3.0,
    start: tuple[float, float, float] = (1.0, 1.0, 1.0),
    burn_in: int = 300,
) -> list[int]:
    """The x-coordinate of Lorenz-63, min–max scaled to [0.15, 0.85], ×100, as integers.

    Integrated with classical RK4 after ``burn_in`` steps onto the attractor, as in the
    paper's time-series case study.

    Example:
        >>> from jacobian_scopes.casestudies import lorenz_series
        >>> [round(x, 2) for x in lorenz_series(3)]
        [...]
    """
    state = np.array(start, dtype=float)

    def f(s: np.ndarray) -> np.ndarray:
        x, y, z = s
        return np.array([sigma * (y - x), x * (rho - z) - y, x * y - beta * z])

    xs = []
    for step in range(burn_in + n):
        k1 = f(state)
        k2 = f(state + dt / 2 * k1)
        k3 = f(state + dt / 2 * k2)
        k4 = f(state + dt * k3)
        state = state + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        if step >= burn_in:
            xs.append(state[0])
    x = np.asarray(xs)
    scaled = 0.15 + 0.7 * (x - x.min()) / (x.max() - x.min())
    return [round(float(v) * 100) for v in scaled]


def series_prompt(values: list[int]) -> str:
    """Two-digit integers joined by commas, ending with a comma (the next value follows)."""
    return ",".join(f"{v:02d}" for v in values) + ","


CASES: tuple[CaseStudy, ...] = (
    CaseStudy(
        "instruction (truthful)",
        "As a state-of-the-art AI assistant, you never argue or deceive, because you are",
        "semantic",
        " truthful",
        (" deceive",),
    ),
    CaseStudy(
        "instruction (nice)",
        "As a state-of-the-art AI assistant, you never argue or deceive, because you are",
        "semantic",
        " nice",
        (" argue",),
    ),
    CaseStudy(
        "implicit bias (liberal)",
        "Tom loves Korean food. He grew up in the South and goes to Columbia. He is a",
        "semantic",
        " liberal",
        (" Columbia",),
    ),
    CaseStudy(
        "implicit bias (conservative)",
        "Tom loves Korean food. He grew up in the South and goes to Columbia. He is a",
        "semantic",
        " conservative",
        (" South",),
    ),
    CaseStudy(
        "translation (French)",
        "French: Nous l'appelons lentille jacobienne. English: We call it Jacobian",
        "fisher",
        None,
        (" lent", "ille"),
    ),
    CaseStudy(
        "translation (German)",
        "German: Dies ist ein Aufsatz über kausale Zuschreibung. "
        "English: This is a paper on causal",
        "fisher",
        None,
        ("Zusch", "reibung"),
    ),
    CaseStudy(
        "translation (Italian)",
        "Italian: Buon pomeriggio, cari colleghi ricercatori. English: Good afternoon, dear fellow",
        "fisher",
        None,
        (" ric", "ercatori"),
    ),
    CaseStudy(
        "time series (Lorenz-63)",
        series_prompt(lorenz_series(40)),
        "temperature",
    ),
)
