"""Deep Feature Factorization (Collins, Achanta and Süsstrunk, ECCV 2018).

A layer's activations over a set of images are factorized into ``k``
concepts: with ``A`` the ``(N h w, K)`` matrix whose rows are the channel
vectors of every position of every image,

    A - m ~ H W,        H >= 0 (N h w, k),  W >= 0 (k, K),

by non-negative matrix factorization (:func:`keras_cam.concepts.nmf`).
``m = min(0, min A)`` per channel is the shift that makes ``A - m``
non-negative (zero after a ReLU). Column ``j`` of ``H``, laid out on each
image's grid, is concept ``j``'s map; row ``j`` of ``W`` is its direction in
channel space. Each concept is scaled so that its map peaks at 1 over the
set (``H_j / c_j``, ``c_j W_j``, ``c_j = max H_j``), so that
``v_j = W_j + m`` is the layer's activation where concept ``j`` is at full
strength and alone. The concepts are ordered by their share of the
factorization, ``sum H_j * sum W_j`` (the mass of ``H_j W_j``).

A concept's class scores are the model's scores (logits where the head is
linearized) when the layer outputs ``v_j`` at every position: for a
``GlobalAveragePooling`` + ``Dense`` head, the ``Dense`` applied to ``v_j``.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np

from keras_cam.concepts.nmf import check_count, check_seed, nmf
from keras_cam.concepts.reader import LayerReader, upsampled


@dataclasses.dataclass
class Concepts:
    """What :class:`DeepFeatureFactorization` found on a set of images.

    Attributes:
        maps: ``(N, k, *S)`` float32: concept ``j``'s map on image ``i``, at the
            input size (``(N, k, *s)`` at the layer's resolution with
            ``upsample=False``), in [0, 1] (1: the concept's strongest place
            in the set).
        basis: ``(k, K)`` float32: ``v_j``, the layer's activation of concept
            ``j`` at full strength.
        shares: ``(N, k)`` float32: each image's share of each concept (the
            mass ``sum_p H_j(p) * sum W_j`` over the image's positions,
            divided by the image's total; rows sum to 1, or 0 for an image
            with no activation).
        class_scores: ``(k, C)`` float32: the model's scores of each concept
            (see the module docstring), or None when the model's output is
            not ``(N, classes)`` or the layer's output cannot be replaced.
        probabilities: ``(k, C)``: the same through the model's own
            softmax/sigmoid, or None.
        error: the relative reconstruction error ``||A - m - H W|| / ||A - m||``.
        offset: ``(K,)``: ``m``.
        layer: the layer's path.
        iterations: the NMF updates run.
    """

    maps: np.ndarray
    basis: np.ndarray
    shares: np.ndarray
    class_scores: np.ndarray | None
    probabilities: np.ndarray | None
    error: float
    offset: np.ndarray
    layer: str
    iterations: int

    @property
    def k(self):
        """The number of concepts."""
        return int(self.basis.shape[0])

    def top_classes(self, n=1):
        """``(k, n)`` int: each concept's ``n`` highest-scoring classes, best first."""
        if self.class_scores is None:
            raise ValueError("These concepts have no class scores (the model's output is not (N, classes)).")
        n = check_count("n", n)
        return np.argsort(-self.class_scores, axis=1, kind="stable")[:, :n]

    def dominant(self, threshold=0.0):
        """``(N, *S)`` int: the concept with the largest map at each pixel, -1 where no map exceeds ``threshold``."""
        best = np.argmax(self.maps, axis=1)
        return np.where(np.max(self.maps, axis=1) > threshold, best, -1)

    def plot(self, images, class_names=None, n_images=12, alpha=0.6, cell_size=2.0, path=None, dpi=100):
        """A figure: each image with its pixels coloured by their dominant concept (see
        :func:`keras_cam.concepts.plot_concepts`)."""
        from keras_cam.concepts.figures import plot_concepts

        return plot_concepts(images, self, class_names=class_names, n_images=n_images, alpha=alpha, cell_size=cell_size,
                             path=path, dpi=dpi)


class DeepFeatureFactorization:
    """Deep Feature Factorization: ``k`` concepts of a layer over a set of images (see the module docstring).

    Args:
        model: a Keras model (single input); never modified.
        layer: the layer to factorize (a name, a path, a layer, or None for
            the last spatial layer, as for the explainers).
        k: the number of concepts, at most the layer's channels.
        iterations: the most NMF updates.
        seed: the seed of the NMF's start (the same seed gives the same concepts).
        tol: the NMF's early stop (see :func:`keras_cam.concepts.nmf`).
        solver: ``"mu"`` (multiplicative updates in ``keras.ops``) or
            ``"sklearn"`` (scikit-learn's NMF).
        output: for multi-output models, the output holding the class scores (as for the explainers).
        linearize: class scores are logits (the final softmax/sigmoid removed), as for the explainers.
        batch_size: images per forward pass.
        data_format: ``"channels_first"`` for a model that takes ``(N, C, H, W)``; None infers it.
        reshape: how a token layer lies on a grid (as for :class:`keras_cam.Explainer`).

    Example:
        >>> dff = keras_cam.DeepFeatureFactorization(model, layer="conv4_relu", k=4)
        >>> concepts = dff(images)            # maps (N, 4, H, W), class_scores (4, classes)
        >>> fig = concepts.plot(images, class_names=names)
    """

    def __init__(self, model, layer=None, *, k=5, iterations=200, seed=0, tol=1e-4, solver="mu", output=None,
                 linearize=True, batch_size=32, data_format=None, reshape=None):
        self.k = check_count("k", k)
        self.iterations = check_count("iterations", iterations)
        self.seed = check_seed(seed)
        if solver not in ("mu", "sklearn"):
            raise ValueError(f"`solver` must be 'mu' or 'sklearn'; received {solver!r}.")
        self.tol, self.solver = tol, solver
        self.reader = LayerReader(model, layer, output=output, linearize=linearize, batch_size=batch_size,
                                  data_format=data_format, reshape=reshape)

    @property
    def model(self):
        return self.reader.model

    @property
    def layer_path(self):
        return self.reader.layer_path

    def __repr__(self):
        return f"DeepFeatureFactorization(model={self.model.name!r}, layer={self.layer_path!r}, k={self.k})"

    def __call__(self, images, upsample=True, normalize=False) -> Concepts:
        """Factorize the layer's activations of ``images`` (a batch ``(N, ...)`` as the model takes it).

        Args:
            images: the set of images, one shape (at least one image).
            upsample: concept maps at the input size (bilinear, as the CAMs).
            normalize: scale each map to [0, 1] on its own (the default keeps
                one scale per concept over the set, so maps compare across images).

        Raises:
            ValueError: for ``k`` larger than the layer's channels, or images of mismatched shapes.
        """
        batch = self.reader.batch(images)
        features, scores = self.reader.activations(batch)
        scored = scores.shape[-1] > 0
        if not scored:
            warnings.warn(f"DeepFeatureFactorization: model {self.model.name!r} does not output class scores "
                          f"(N, classes), so the concepts have maps but no class scores (class_scores is None).",
                          stacklevel=2)
        return factorize(features, self.k, reader=self.reader, image=batch[0] if scored else None,
                         size=tuple(int(d) for d in batch.shape[1:-1]) if upsample else None,
                         normalize=normalize, iterations=self.iterations, seed=self.seed, tol=self.tol,
                         solver=self.solver)


def factorize(features, k, *, reader=None, image=None, size=None, normalize=False, iterations=200, seed=0,
              tol=1e-4, solver="mu"):
    """DFF of feature maps ``(N, *s, K)`` already read (see the module docstring).

    ``reader`` (a :class:`~keras_cam.concepts.reader.LayerReader`) and ``image``
    (one channels-last input) give the class scores; ``size`` upsamples the maps.
    """
    features = np.asarray(features, np.float32)
    n, spatial, channels = features.shape[0], features.shape[1:-1], features.shape[-1]
    if k > channels:
        raise ValueError(f"`k` is {k}, more concepts than layer {getattr(reader, 'layer_path', '')!r}'s {channels} "
                         f"channels; choose k <= {channels} (or a layer with more channels).")
    flat = features.reshape(-1, channels)
    offset = np.minimum(flat.min(axis=0), 0.0).astype(np.float32)
    found = nmf(flat - offset, k, iterations=iterations, seed=seed, tol=tol, solver=solver)
    h, w = found.coefficients.astype(np.float64), found.basis.astype(np.float64)
    peak = h.max(axis=0)
    scale = np.where(peak > 0, peak, 1.0)
    h, w = h / scale, w * scale[:, None]
    mass = h.sum(axis=0) * w.sum(axis=1)
    order = np.argsort(-mass, kind="stable")
    h, w = h[:, order], w[order]
    per_image = h.reshape(n, -1, k).sum(axis=1) * w.sum(axis=1)
    total = per_image.sum(axis=1, keepdims=True)
    shares = np.divide(per_image, total, out=np.zeros_like(per_image), where=total > 0)
    maps = np.moveaxis(h.reshape((n,) + spatial + (k,)), -1, 1).astype(np.float32)
    if size is not None or normalize:
        maps = upsampled(maps, size if size is not None else spatial, normalize)
    basis = (w + offset).astype(np.float32)
    scores = probabilities = None
    if reader is not None and image is not None:
        scores, probabilities = _class_scores(reader, image, basis, spatial)
    return Concepts(maps=maps, basis=basis, shares=shares.astype(np.float32), class_scores=scores,
                    probabilities=probabilities, error=float(found.errors[-1]), offset=offset,
                    layer=str(getattr(reader, "layer_path", "")), iterations=found.iterations)


def _class_scores(reader, image, basis, spatial):
    """``(scores, probabilities)`` of each concept vector through the head, or ``(None, None)`` with a
    warning when the model's output has no classes or the layer cannot be replaced."""
    try:
        scores = reader.head_scores(image, basis, spatial)
    except ValueError as err:
        warnings.warn(f"DeepFeatureFactorization: the concepts cannot be sent through the rest of the model, "
                      f"so they have no class scores ({str(err)[:300]})", stacklevel=4)
        return None, None
    from keras_cam._compat import ops, to_host

    probabilities = np.asarray(to_host(reader.graph.probabilities(ops.convert_to_tensor(scores))), np.float32)
    return scores, probabilities
