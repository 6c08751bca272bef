"""Properties of the map itself: is it concentrated, does it depend on the class, is it stable?

- :func:`sparseness` (Chalasani et al., ICML 2020): the Gini index of the
  map's absolute values; 0 for a uniform map, near 1 for a single peak.
- :func:`complexity` (Bhatt et al., IJCAI 2020): the entropy of the map's
  absolute values as a distribution; ``log n`` for a uniform map, 0 for a
  single peak.
- :func:`effective_complexity` (Nguyen and Martínez 2020): the number of
  pixels whose absolute value exceeds ``eps`` times the map's largest.
- :func:`random_logit` (Sixt et al., ICML 2020): how similar (SSIM) the map
  of the explained class is to the map of another class drawn at random; a
  map that ignores the class scores 1.
- :func:`max_sensitivity` (Yeh et al., NeurIPS 2019): the largest relative
  change of the map under small random perturbations of the image.

``sparseness`` and ``complexity`` take maps; ``random_logit`` and
``max_sensitivity`` take an explainer, since they explain again (other
classes, perturbed images). Maps have any layout ``(N, *S)``. Each returns
the mean over images, or with ``reduce=None`` one value per image. The maps
are host arrays, so these are computed with numpy, the same on every backend.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from keras_cam._compat import to_host
from keras_cam.metrics._scoring import check_reduce, check_seed, checked_maps, explainer_batch, reduced


def _flat_abs(maps):
    m = checked_maps(maps)
    return np.abs(m.reshape(len(m), -1))


def sparseness(maps, *, reduce="mean"):
    """The Gini index of each map's absolute values (Chalasani et al. 2020), mean over maps; higher is sparser.

    With the ``n`` absolute values ``a_(1) <= ... <= a_(n)`` of a map sorted
    ascending,

    ``G = sum_i (2 i - n - 1) a_(i) / (n sum_i a_(i))``, ``i = 1..n``:

    0 for a uniform map, ``(n - 1) / n`` (the largest value) for a map with
    one non-zero pixel. An all-zero map, which shows nothing, scores 0 like
    a uniform one.

    Args:
        maps: ``(N, *S)`` maps: ``(N, H, W)`` (or ``(N, T)``, ``(N, D, H, W)``).
        reduce: ``"mean"`` (the mean over maps) or None (one value per map).

    Returns:
        The mean Gini index, a float in [0, 1); with ``reduce=None`` the ``(N,)`` indices.

    Raises:
        ValueError: for maps that are not a batch ``(N, *S)`` or hold NaN/Inf,
            or an unknown ``reduce``.

    Example:
        >>> keras_cam.metrics.sparseness(keras_cam.GradCAM(model)(images))
    """
    check_reduce(reduce)
    a = np.sort(_flat_abs(maps), axis=1)
    n = a.shape[1]
    i = np.arange(1, n + 1)
    total = a.sum(axis=1)
    gini = np.divide(((2 * i - n - 1) * a).sum(axis=1), n * total, out=np.zeros(len(a)), where=total > 0)
    return reduced(gini, reduce)


def complexity(maps, *, reduce="mean"):
    """The entropy of each map's absolute values (Bhatt et al. 2020), mean over maps; lower is simpler.

    With ``p_i = |m_i| / sum_j |m_j|`` over the ``n`` pixels of a map,

    ``H = -sum_i p_i log p_i`` (natural log, ``0 log 0 = 0``):

    ``log n`` for a uniform map (the largest value), 0 for a map with one
    non-zero pixel. An all-zero map has no distribution (``p`` is ``0 / 0``)
    and is given ``log n``, the worst score, not because it is uniform but
    because it singles nothing out: neither NaN (which would empty the mean)
    nor 0 (the best score, for a map that shows nothing), so a method cannot
    lower its complexity by returning empty maps. :func:`sparseness` scores
    an all-zero map 0, its own worst value, for the same reason.

    Args:
        maps: ``(N, *S)`` maps: ``(N, H, W)`` (or ``(N, T)``, ``(N, D, H, W)``).
        reduce: ``"mean"`` (the mean over maps) or None (one value per map).

    Returns:
        The mean entropy in nats, a float in [0, log n]; with ``reduce=None``
        the ``(N,)`` entropies.

    Raises:
        ValueError: for maps that are not a batch ``(N, *S)`` or hold NaN/Inf,
            or an unknown ``reduce``.

    Example:
        >>> keras_cam.metrics.complexity(keras_cam.GradCAM(model)(images))
    """
    check_reduce(reduce)
    a = _flat_abs(maps)
    total = a.sum(axis=1, keepdims=True)
    zero = total[:, 0] == 0
    p = np.divide(a, total, out=np.full_like(a, 1.0 / a.shape[1]), where=~zero[:, None])
    logs = np.log(p, out=np.zeros_like(p), where=p > 0)
    return reduced(-(p * logs).sum(axis=1), reduce)


def effective_complexity(maps, *, eps=1e-5, reduce="mean"):
    """Effective complexity (Nguyen and Martínez 2020): how many pixels carry attribution; lower is simpler.

    With each map scaled by its largest absolute value,

    ``EC = #{p : |m_p| / max_q |m_q| > eps}``

    (the default ``eps = 1e-5`` is Quantus's): ``n`` for a map with no zero,
    1 for a single peak. An all-zero map scores 0: no pixel carries
    attribution. Quantus: ``EffectiveComplexity`` (``abs=True``,
    ``normalise=True``; Quantus scales a whole batch by its largest value,
    the same as here when every map's maximum is 1, as keras-cam maps'
    are). Cost: no model call.

    Args:
        maps: ``(N, *S)`` maps.
        eps: the threshold on the scaled absolute values, >= 0.
        reduce: ``"mean"`` (the mean over maps) or None (one count per map).

    Returns:
        The mean count, a float in [0, n]; with ``reduce=None`` the ``(N,)`` counts.

    Example:
        >>> keras_cam.metrics.effective_complexity(keras_cam.GradCAM(model)(images))
    """
    check_reduce(reduce)
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"`eps` must be a finite number >= 0; received {eps!r}.")
    a = _flat_abs(maps)
    top = a.max(axis=1, keepdims=True)
    scaled = np.divide(a, top, out=np.zeros_like(a), where=top > 0)
    return reduced((scaled > eps).sum(axis=1), reduce)


def _gaussian_window(size, sigma=1.5):
    t = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-0.5 * (t / sigma) ** 2)
    return g / g.sum()


def _valid_filter(x, window):
    """Correlate ``(N, *S)`` with ``window`` along every spatial axis, valid positions only."""
    for axis in range(1, x.ndim):
        windows = np.lib.stride_tricks.sliding_window_view(x, len(window), axis=axis)
        x = windows @ window
    return x


def ssim(a, b, max_val=1.0):
    """Structural similarity (Wang et al. 2004) of each pair of maps ``(N, *S)``, any spatial rank.

    Local means, variances and the covariance are taken under a Gaussian
    window (sigma 1.5, ``min(11, smallest side)`` samples per axis, the
    window separable along every axis, valid positions only); with
    ``c1 = (0.01 L)^2`` and ``c2 = (0.03 L)^2`` for the value range ``L``,

    ``SSIM = mean over positions of (2 mu_a mu_b + c1)(2 s_ab + c2) / ((mu_a^2 + mu_b^2 + c1)(s_a^2 + s_b^2 + c2))``.

    For images ``(N, H, W)`` this is TensorFlow's ``tf.image.ssim`` and
    scikit-image's ``structural_similarity`` (Gaussian weights, sigma 1.5,
    population covariance) up to float rounding; :func:`keras_cam.sanity.ssim`
    is this function.

    Args:
        a: ``(N, *S)`` maps.
        b: ``(N, *S)`` maps of the same shape.
        max_val: the value range ``L`` (1 for maps in [0, 1]).

    Returns:
        ``(N,)`` float64 SSIM values, 1 for identical maps.

    Raises:
        ValueError: for maps of different shapes or not a batch ``(N, *S)``.
    """
    x, y = checked_maps(a), checked_maps(b)
    if x.shape != y.shape:
        raise ValueError(f"SSIM compares maps of one shape; received {x.shape} and {y.shape}.")
    window = _gaussian_window(min(11, *x.shape[1:]))
    c1, c2 = (0.01 * max_val) ** 2, (0.03 * max_val) ** 2
    mu_x, mu_y = _valid_filter(x, window), _valid_filter(y, window)
    xx, yy, xy = _valid_filter(x * x, window), _valid_filter(y * y, window), _valid_filter(x * y, window)
    luminance = (2 * mu_x * mu_y + c1) / (mu_x ** 2 + mu_y ** 2 + c1)
    structure = (2 * (xy - mu_x * mu_y) + c2) / (xx + yy - mu_x ** 2 - mu_y ** 2 + c2)
    return (luminance * structure).reshape(len(x), -1).mean(axis=1)




def random_logit(explainer, images, targets=None, seed=0, *, reduce="mean"):
    """Random-logit test (Sixt et al. 2020): the SSIM between the map of the explained class and of another.

    For each image, the map of its class ``c`` (top-1 by default) is
    compared by :func:`ssim` with the map of a class ``c'`` drawn uniformly
    among the other ``K - 1`` classes (one draw per image, from a generator
    seeded with ``seed``). A map that explains the class changes with it and
    scores low; near 1 means the map ignores the class (it shows the image,
    not the decision). Lower is better.

    Args:
        explainer: a keras-cam explainer (``keras_cam.GradCAM(model)``...)
            returning maps ``(N, *S)`` in [0, 1] (``normalize=True``, the default).
        images: a batch as the explainer's model takes it.
        targets: None (top-1), an int, or one int per image: the explained class.
        seed: the seed of the random other classes.
        reduce: ``"mean"`` (the mean over images) or None (one value per image).

    Returns:
        The mean SSIM, a float in [-1, 1]; with ``reduce=None`` the ``(N,)``
        per-image SSIMs.

    Raises:
        ValueError: for a model with fewer than 2 classes, a multi-input
            model, or an unknown ``reduce``.
        TypeError: for a callable target (it has no other class).

    Example:
        >>> keras_cam.metrics.random_logit(keras_cam.GradCAM(model), images)   # lower is better
    """
    if callable(targets):
        raise TypeError("random_logit compares classes, so `targets` must be None (top-1), an int or one int "
                        "per image; a callable target has no other class.")
    check_reduce(reduce)
    check_seed(seed)
    x = explainer_batch(explainer, images, "random_logit")
    first = explainer.explain(x, targets)
    classes = np.asarray(first.targets, np.int64)
    k = explainer.graph.num_classes
    if k is None or k < 2:
        raise ValueError(f"random_logit needs a model with at least 2 classes; this one has {k}.")
    draw = np.random.default_rng(seed).integers(0, k - 1, size=len(classes))
    others = (draw + (draw >= classes)).astype(np.int32)
    second = explainer(x, others)
    return reduced(ssim(first.maps, second), reduce)


def max_sensitivity(explainer, images, targets=None, radius=0.02, samples=10, seed=0, *, reduce="mean"):
    """Max-sensitivity (Yeh et al. 2019): the largest relative change of the map under small perturbations.

    ``SENS(x) = max_i ||E(x + d_i) - E(x)|| / ||E(x)||`` over ``samples``
    perturbations ``d_i`` drawn uniformly in the L-infinity ball of radius
    ``radius * (max x - min x)`` (the image's value range over all pixels and
    channels), ``E`` the map (the Frobenius norm over its pixels), the class
    held at the one explained on ``x``. The result is the mean over images;
    lower is more stable, and 0 at ``radius=0``. An image whose map
    ``E(x)`` is all zeros scores 0 if every perturbed map is all zeros too,
    and infinity otherwise. The perturbations are drawn per sample for the
    whole batch (in channels-last order) from one generator seeded with
    ``seed``, so the value depends neither on the explainer's ``batch_size``
    nor on the model's data format.

    Args:
        explainer: a keras-cam explainer (``keras_cam.GradCAM(model)``...).
        images: a batch as the explainer's model takes it.
        targets: None (top-1), an int, one int per image, or a callable target.
        radius: the perturbation's half-width, as a fraction of each image's
            value range.
        samples: the number of perturbations per image.
        seed: the seed of the perturbations.
        reduce: ``"mean"`` (the mean over images) or None (one value per image).

    Returns:
        The mean max-sensitivity, a float >= 0; with ``reduce=None`` the
        ``(N,)`` per-image values.

    Raises:
        ValueError: for a negative radius, fewer than 1 sample, a
            multi-input model, or an unknown ``reduce``.

    Example:
        >>> keras_cam.metrics.max_sensitivity(keras_cam.GradCAM(model), images, radius=0.02)
    """
    if isinstance(radius, (bool, np.bool_)) or not isinstance(radius, numbers.Real) or radius < 0 \
            or not math.isfinite(radius):
        raise ValueError(f"`radius` must be a finite number >= 0; received {radius!r}.")
    if isinstance(samples, (bool, np.bool_)) or not isinstance(samples, (int, np.integer)) or samples < 1:
        raise ValueError(f"`samples` must be a positive int; received {samples!r}.")
    check_reduce(reduce)
    check_seed(seed)
    x = explainer_batch(explainer, images, "max_sensitivity")
    # The clean maps come from the compiled computation, as every perturbed one does: an
    # explainer runs the first call of an input shape eagerly (keras_cam.compiled.Compiled), and
    # eager and compiled kernels round differently (~1e-7), which would read as sensitivity.
    explainer.explain(x, targets)
    first = explainer.explain(x, targets)
    fixed = targets if first.targets is None else first.targets
    base = np.asarray(first.maps, np.float64).reshape(len(x), -1)
    axes = tuple(range(1, x.ndim))
    half = (radius * (x.max(axis=axes) - x.min(axis=axes))).reshape((-1,) + (1,) * (x.ndim - 1))
    rng = np.random.default_rng(seed)
    worst = np.zeros(len(x))
    inputs = explainer.graph.inputs
    last = tuple(inputs.to_channels_last(x[:1]).shape[1:])
    for _ in range(samples):
        # drawn channels-last, so that a channels-first model gets the same perturbations
        d = np.asarray(to_host(inputs.to_model_format(rng.uniform(-1.0, 1.0, (len(x),) + last)))) * half
        maps = np.asarray(explainer(x + d.astype(np.float32), fixed), np.float64).reshape(len(x), -1)
        worst = np.maximum(worst, np.linalg.norm(maps - base, axis=1))
    norm = np.linalg.norm(base, axis=1)
    ratio = np.divide(worst, norm, out=np.where(worst > 0, np.inf, 0.0), where=norm > 0)
    return reduced(ratio, reduce)
