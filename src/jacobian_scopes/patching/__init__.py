"""Activation patching and attribution patching, on the same rows and columns as the scopes.

Two prompts of the same length: ``clean`` (the model does the task, e.g. " Mary" after
"When Mary and John went to the store, John gave a drink to") and ``corrupt`` (the
decisive detail changed, e.g. the names swapped). A *metric* reads the logits of one run;
by default it is the logit difference of ``target`` over ``foil`` at the explained
position, normalised so that the corrupt run scores 0 and the clean run 1 (the
indirect-object convention).

* :func:`activation_patching`: for each source activation (a layer's residual stream at a
  position, or one head's ``z`` at a position), run the corrupt prompt with that one
  activation taken from the clean run (``direction="denoising"``), or the clean prompt with
  it taken from the corrupt run (``"noising"``), and record the metric. One patched forward
  pass per cell, run in batches.
* :func:`attribution_patching`: the first-order estimate of the same map,
  ``(a_donor − a_base) · ∇_a metric(base run)``, from one forward and one backward pass.
* :func:`compare`: the Semantic scope's maps (norm and ``first_order``), attribution
  patching and activation patching on the same cells, their rank agreement in a table, and
  one view with all of them side by side.

Layouts follow the scopes' drill-down (``sources=`` in :func:`jacobian_scopes.semantic_scope`):
``(layer, pos)`` for ``"resid_pre"`` and the other per-layer shortcuts or a list of hooks,
``(layer, head, pos)`` for ``"z"``.

One module per concern, data flowing down:

* :mod:`~jacobian_scopes.patching.comparison`: :func:`compare`, :func:`agreement`;
* :mod:`~jacobian_scopes.patching.activation` and
  :mod:`~jacobian_scopes.patching.attribution`: the two patchings;
* :mod:`~jacobian_scopes.patching.result`: :class:`PatchingResult`;
* :mod:`~jacobian_scopes.patching.prepare`: what both patchings share (checked arguments,
  the two unpatched runs, the default metric).

Example:
    >>> import jacobian_scopes as js
    >>> from jacobian_scopes import patching
    >>> model = js.load_default_model()
    >>> clean, corrupt = "Alice met Bob. Bob thanked", "Bob met Alice. Alice thanked"
    >>> at = patching.attribution_patching(model, clean, corrupt, target=" Alice", foil=" Bob")
    >>> at.str_tokens[-1], at.target, at.foil
    (' thanked', ' Alice', ' Bob')
"""

from jacobian_scopes.patching.activation import activation_patching
from jacobian_scopes.patching.attribution import attribution_patching
from jacobian_scopes.patching.comparison import PatchingComparison, agreement, compare
from jacobian_scopes.patching.prepare import logit_diff_metric
from jacobian_scopes.patching.result import PatchingResult

__all__ = [
    "PatchingComparison",
    "PatchingResult",
    "activation_patching",
    "agreement",
    "attribution_patching",
    "compare",
    "logit_diff_metric",
]
