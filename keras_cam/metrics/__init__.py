"""Is a map faithful to the model, does it point at the object, and is it a good map?

Four families, one module each:

- faithfulness (:mod:`keras_cam.metrics.perturbation`): change the image as
  the map says and read the explained class's probability:
  :func:`average_drop`, :func:`increase_in_confidence` (Chattopadhyay et al.
  2018), :func:`deletion_auc`, :func:`insertion_auc` (Petsiuk et al. 2018),
  :func:`road` with :func:`impute` (Rong et al. 2022);
- localization (:mod:`keras_cam.metrics.localization`): against
  ground-truth boxes or masks, :func:`pointing_game`,
  :func:`energy_pointing_game`, :func:`attribution_localization`,
  :func:`top_k_intersection`, :func:`relevance_rank_accuracy`,
  :func:`relevance_mass_accuracy`, :func:`mask_auc`, and :func:`focus` on
  mosaics it builds;
- properties of the map (:mod:`keras_cam.metrics.properties`):
  :func:`sparseness`, :func:`complexity`, and, calling the explainer again,
  :func:`random_logit` and :func:`max_sensitivity`; :func:`effective_complexity`;
- robustness (:mod:`keras_cam.metrics.robustness`): :func:`avg_sensitivity`,
  :func:`local_lipschitz_estimate`, :func:`continuity`, :func:`consistency`,
  :func:`relative_input_stability`, :func:`relative_output_stability`,
  :func:`relative_representation_stability`;
- randomization (:mod:`keras_cam.metrics.randomization`): :func:`smooth_mprt`,
  :func:`efficient_mprt` on a :func:`randomized_copy` of the model;
- axioms (:mod:`keras_cam.metrics.axiomatic`): :func:`completeness`,
  :func:`non_sensitivity`, :func:`input_invariance` (on a :func:`shifted_copy`);
- :func:`evaluate` (:mod:`keras_cam.metrics.evaluation`): every metric for
  every method, one :class:`EvaluationTable` with per-image values,
  bootstrap confidence intervals and paired comparisons (:class:`Comparison`).

Conventions: ``images`` ``(N, H, W, C)`` as the model takes them (or
``(N, T, C)`` signals, ``(N, D, H, W, C)`` volumes, channels first for a
channels-first model: every metric works in each layout of
:mod:`keras_cam.layout`, "pixel" meaning one position); ``maps``
``(N, H, W)`` at the image size (an explainer's output; ``(N, T)``,
``(N, D, H, W)``); ``targets`` None for each image's top-1 class (on the
unchanged image), an int, or one int per image; ``boxes`` ``(N, 4)`` as
``(y0, x0, y1, x1)`` pixel coordinates, end exclusive (``(N, 2 r)`` with the
``r`` starts then the ``r`` ends for ``r`` spatial axes). Images are scored
``batch_size`` at a time by one compiled function per model
(:class:`keras_cam.compiled.Compiled`, on TensorFlow, JAX or PyTorch); the
functions of the last few models used are kept, so calling metrics again on
the same model does not recompile. Every metric returns the mean over
images (``reduce="mean"``, the default) or one value per image
(``reduce=None``, an ``(N,)`` float64 array whose mean is the default).

Example:
    >>> maps = keras_cam.GradCAM(model)(images)
    >>> keras_cam.metrics.average_drop(model, images, maps)        # percent, lower is better
    >>> keras_cam.metrics.road(model, images, maps, order="combined")  # higher is better
    >>> keras_cam.metrics.energy_pointing_game(maps, boxes)        # percent, higher is better
    >>> keras_cam.metrics.deletion_auc(model, images, maps, reduce=None)  # one area per image
    >>> print(keras_cam.metrics.evaluate({"Grad-CAM": keras_cam.GradCAM}, model, images).to_markdown())
"""

from keras_cam.metrics.evaluation import (
    DEFAULT_METRICS,
    METRICS,
    Comparison,
    EvaluationTable,
    bootstrap_interval,
    evaluate,
)
from keras_cam.metrics.localization import (
    attribution_localization,
    energy_pointing_game,
    focus,
    focus_mosaics,
    focus_scores,
    mask_auc,
    pointing_game,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
    top_k_intersection,
)
from keras_cam.metrics.perturbation import (
    PERCENTAGES,
    SUBSTRATES,
    average_drop,
    deletion_auc,
    impute,
    increase_in_confidence,
    insertion_auc,
    neighbour_weights,
    road,
    saliency_ranks,
    substrate_images,
)
from keras_cam.metrics.axiomatic import completeness, input_invariance, non_sensitivity, shifted_copy
from keras_cam.metrics.faithfulness import (
    faithfulness_correlation,
    faithfulness_estimate,
    infidelity,
    irof,
    monotonicity,
    monotonicity_correlation,
    pixel_flipping,
    region_perturbation,
    selectivity,
    sensitivity_n,
    sufficiency,
)
from keras_cam.metrics.properties import (
    complexity,
    effective_complexity,
    max_sensitivity,
    random_logit,
    sparseness,
    ssim,
)
from keras_cam.metrics.randomization import efficient_mprt, randomized_copy, smooth_mprt
from keras_cam.metrics.robustness import (
    avg_sensitivity,
    consistency,
    continuity,
    local_lipschitz_estimate,
    relative_input_stability,
    relative_output_stability,
    relative_representation_stability,
)

__all__ = [
    "faithfulness_correlation",
    "faithfulness_estimate",
    "infidelity",
    "irof",
    "monotonicity",
    "monotonicity_correlation",
    "pixel_flipping",
    "region_perturbation",
    "selectivity",
    "sensitivity_n",
    "sufficiency",
    "avg_sensitivity",
    "completeness",
    "consistency",
    "continuity",
    "effective_complexity",
    "efficient_mprt",
    "input_invariance",
    "local_lipschitz_estimate",
    "non_sensitivity",
    "randomized_copy",
    "relative_input_stability",
    "relative_output_stability",
    "relative_representation_stability",
    "shifted_copy",
    "smooth_mprt",
    "Comparison",
    "EvaluationTable",
    "attribution_localization",
    "average_drop",
    "bootstrap_interval",
    "complexity",
    "deletion_auc",
    "energy_pointing_game",
    "evaluate",
    "focus",
    "focus_mosaics",
    "focus_scores",
    "impute",
    "increase_in_confidence",
    "insertion_auc",
    "mask_auc",
    "max_sensitivity",
    "neighbour_weights",
    "pointing_game",
    "random_logit",
    "relevance_mass_accuracy",
    "relevance_rank_accuracy",
    "road",
    "saliency_ranks",
    "sparseness",
    "ssim",
    "top_k_intersection",
    "substrate_images",
]
