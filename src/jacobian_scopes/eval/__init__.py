"""Is it faithful? Attribution baselines and faithfulness metrics for generative LMs.

* :mod:`~jacobian_scopes.eval.baselines`: attention, gradient norm, input × gradient,
  integrated gradients, occlusion, under the scopes' API;
* :mod:`~jacobian_scopes.eval.methods`: named methods as the evaluation sees them (by
  name or as :class:`~jacobian_scopes.eval.methods.Method` objects);
* :mod:`~jacobian_scopes.eval.evaluate`: deletion AOPC, ERASER, leave-one-out agreement;
* :mod:`~jacobian_scopes.eval.sanity`: the weight-randomisation check;
* :mod:`~jacobian_scopes.eval.stats`, :mod:`~jacobian_scopes.eval.store`,
  :mod:`~jacobian_scopes.eval.passages`, :mod:`~jacobian_scopes.eval.perturb`: the
  statistics, the resumable results file, the LAMBADA passages, the gradient-free passes;
* :mod:`~jacobian_scopes.eval.distributed`: one evaluation over processes under ``torchrun``.

Example:
    >>> from jacobian_scopes.eval import evaluate
    >>> callable(evaluate.aopc)
    True
"""

from jacobian_scopes.eval import (
    baselines,
    distributed,
    evaluate,
    methods,
    passages,
    perturb,
    sanity,
    stats,
    store,
)

__all__ = [
    "baselines",
    "distributed",
    "evaluate",
    "methods",
    "passages",
    "perturb",
    "sanity",
    "stats",
    "store",
]
