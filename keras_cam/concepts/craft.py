"""CRAFT: concept recursive activation factorization (Fel et al., CVPR 2023), one level.

For one class ``c`` and its images:

1. **Crops.** Each image is cut into ``crop_size`` squares (stride ``stride``),
   each resized to the input size and run through the model; the layer's
   activation is averaged over its positions: ``A`` ``(n_crops, K)``, which
   must be non-negative (a layer after a ReLU).
2. **Concepts.** NMF ``A ~ U W`` (:func:`keras_cam.concepts.nmf`): ``W``
   ``(k, K)`` the concept bank, ``U`` each crop's coefficients. Each concept
   is scaled so that its largest crop coefficient is 1.
3. **Importance.** On each class image, the activation at every position is
   written on the bank, ``a(p) ~ u(p) W`` (NMF with ``W`` fixed). A mask
   ``M`` in ``[0, 1]^k`` scales the coefficients, ``a'(p) = (u(p) * M) W``, and
   the rest of the model gives the class score ``f(M)``. Concept ``j``'s
   importance is the total Sobol index of ``M_j`` (:func:`sobol_total_indices`,
   Jansen's estimator on a scrambled Sobol design, ``M_j ~ U(0, 1)``),
   averaged over the images: the share of the score's variance that involves
   ``M_j``. The concepts are ordered by importance, the most important first.
4. **Attribution maps.** On new images, ``u(p)`` per concept, upsampled as
   the CAMs are (:meth:`CRAFT.maps`).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from keras_cam import _compat
from keras_cam._compat import ops
from keras_cam.concepts.nmf import check_count, check_seed, nmf
from keras_cam.concepts.reader import LayerReader, upsampled


def sobol_design(k, n, seed=0):
    """The ``n (k + 2)`` points ``[A; B; C_1; ...; C_k]`` of Jansen's estimator, in ``[0, 1)^k``.

    ``A`` and ``B`` ``(n, k)`` are the two halves of an ``n``-point scrambled
    Sobol sequence in ``2k`` dimensions (``scipy.stats.qmc.Sobol``, seeded);
    ``C_i`` is ``A`` with its column ``i`` taken from ``B``.

    Returns:
        ``(n (k + 2), k)`` float64.
    """
    from scipy.stats import qmc

    k, n = check_count("k", k), check_count("n", n, least=2)
    sequence = qmc.Sobol(2 * k, scramble=True, seed=check_seed(seed)).random_base2(math.ceil(math.log2(n)))[:n]
    a, b = sequence[:, :k], sequence[:, k:]
    mixed = []
    for i in range(k):
        c = a.copy()
        c[:, i] = b[:, i]
        mixed.append(c)
    return np.concatenate([a, b] + mixed)


def sobol_total_indices(values, k):
    """Total Sobol indices from ``f`` on :func:`sobol_design`'s points, Jansen's estimator.

    ``ST_i = mean((f(A) - f(C_i))^2) / (2 Var f)``, with ``Var f`` the
    variance of ``f(A)`` and ``f(B)`` together (Jansen 1999; Saltelli et al. 2010).

    Args:
        values: ``(n (k + 2),)`` ``f`` at the design's points, in its order
            (or ``(n (k + 2), m)`` for ``m`` functions at once).
        k: the number of inputs.

    Returns:
        ``(k,)`` (``(k, m)``) float64; 0 where ``f`` is constant.
    """
    k = check_count("k", k)
    f = np.asarray(values, np.float64)
    if f.ndim == 0 or len(f) % (k + 2) or len(f) < 2 * (k + 2):
        raise ValueError(f"`values` must hold f at the n (k + 2) points of sobol_design(k={k}, n), n >= 2; "
                         f"received {len(np.atleast_1d(f))} values.")
    n = len(f) // (k + 2)
    fa, fb, fc = f[:n], f[n:2 * n], f[2 * n:].reshape((k, n) + f.shape[1:])
    var = np.var(np.concatenate([fa, fb]), axis=0)
    total = np.mean((fa[None] - fc) ** 2, axis=1) / 2.0
    return np.divide(total, var, out=np.zeros_like(total), where=var > 0)


@dataclasses.dataclass
class CraftConcepts:
    """What :meth:`CRAFT.fit` found for one class.

    Attributes:
        target: the class.
        basis: ``(k, K)`` float32: the concept bank ``W`` (rows scaled so
            that each concept's largest crop coefficient is 1).
        importance: ``(k,)`` float64: each concept's total Sobol index,
            averaged over the images; the concepts are in this order, the
            most important first.
        importance_per_image: ``(N, k)`` the same per image.
        crop_coefficients: ``(n_crops, k)`` float32: ``U``.
        crops: ``(n_crops, c, c, C)``: the crops as cut from the images
            (before resizing), channels-last.
        crop_boxes: ``(n_crops, 3)`` int: ``(image, y0, x0)`` of each crop.
        error: the NMF's relative reconstruction error on the crops.
        layer: the layer's path.
    """

    target: int
    basis: np.ndarray
    importance: np.ndarray
    importance_per_image: np.ndarray
    crop_coefficients: np.ndarray
    crops: np.ndarray
    crop_boxes: np.ndarray
    error: float
    layer: str

    @property
    def k(self):
        return int(self.basis.shape[0])

    def top_crops(self, concept, n=6):
        """The positions (in :attr:`crops`) of the ``n`` crops with the largest coefficient of ``concept``."""
        if isinstance(concept, bool) or not isinstance(concept, (int, np.integer)) or not 0 <= concept < self.k:
            raise ValueError(f"`concept` must be an int in 0..{self.k - 1}; received {concept!r}.")
        n = check_count("n", n)
        return np.argsort(-self.crop_coefficients[:, int(concept)], kind="stable")[:n]

    def plot(self, n_concepts=3, n_crops=6, class_names=None, cell_size=1.2, path=None, dpi=100):
        """A figure: the ``n_concepts`` most important concepts, one row each, with their importance and
        their ``n_crops`` crops of largest coefficient."""
        from keras_cam.concepts.figures import ConceptFigure, colours
        from keras_cam.viz import as_rgb_uint8, displayable

        n_concepts = min(check_count("n_concepts", n_concepts), self.k)
        n_crops = min(check_count("n_crops", n_crops), len(self.crops))
        fig = ConceptFigure(figsize=(cell_size * (n_crops + 0.5), cell_size * 1.25 * n_concepts), dpi=dpi,
                            layout="constrained")
        axes = np.asarray(fig.subplots(n_concepts, n_crops, squeeze=False))
        palette = colours(self.k)
        name = str(class_names[self.target]) if class_names is not None else f"class {self.target}"
        fig.suptitle(f"CRAFT concepts of {name} at {self.layer}", fontsize=10)
        for j in range(n_concepts):
            for col, i in enumerate(self.top_crops(j, n_crops)):
                ax = axes[j, col]
                ax.imshow(as_rgb_uint8(displayable(np.asarray(self.crops[i], np.float32))))
                ax.set_xticks([])
                ax.set_yticks([])
                for spine in ax.spines.values():
                    spine.set_color(palette[j])
                    spine.set_linewidth(2)
                ax.set_title(f"{self.crop_coefficients[i, j]:.2f}", fontsize=7)
            axes[j, 0].set_ylabel(f"concept {j}\nST {self.importance[j]:.2f}", fontsize=8)
        if path is not None:
            fig.savefig(path, bbox_inches="tight")
        return fig


class CRAFT:
    """CRAFT concepts of one class, their Sobol importance, and their maps (see the module docstring).

    Args:
        model: a Keras model (single input, 2-D images); never modified.
        layer: the layer (as for the explainers); its activations must be
            non-negative (after a ReLU).
        k: the number of concepts, at most the layer's channels.
        crop_size: the crops' side in pixels (default: half the images' shorter side).
        stride: the crops' step in pixels (default: ``crop_size``, no overlap).
        n_designs: ``n`` of the Sobol design (``n (k + 2)`` head passes per image).
        iterations: the most NMF updates (see :func:`keras_cam.concepts.nmf`).
        seed: the seed of the NMF's start and of the Sobol design's scrambling.
        tol: the NMF's early stop.
        output: for multi-output models, the output holding the class scores.
        linearize: scores are logits (the final softmax/sigmoid removed), as for the explainers.
        batch_size: images (or edited copies) per forward pass.
        data_format: ``"channels_first"`` for a model that takes ``(N, C, H, W)``; None infers it.

    Example:
        >>> craft = keras_cam.CRAFT(model, layer="conv4_relu", k=5, crop_size=32)
        >>> concepts = craft.fit(images[labels == 0], target=0)
        >>> concepts.importance                    # (5,) total Sobol indices, largest first
        >>> maps = craft.maps(new_images)          # (N, 5, H, W)
        >>> fig = concepts.plot(n_concepts=3)
    """

    def __init__(self, model, layer=None, *, k=10, crop_size=None, stride=None, n_designs=32, iterations=300, seed=0,
                 tol=1e-4, output=None, linearize=True, batch_size=32, data_format=None):
        self.k = check_count("k", k)
        self.crop_size = None if crop_size is None else check_count("crop_size", crop_size)
        self.stride = None if stride is None else check_count("stride", stride)
        self.n_designs = check_count("n_designs", n_designs, least=2)
        self.iterations = check_count("iterations", iterations)
        self.seed = check_seed(seed)
        self.tol = tol
        self.reader = LayerReader(model, layer, output=output, linearize=linearize, batch_size=batch_size,
                                  data_format=data_format)
        if self.reader.graph.inputs.rank != 2:
            raise ValueError("CRAFT cuts images into square crops; this model's input is not 2-D images. Use "
                             "keras_cam.DeepFeatureFactorization, which reads any layout.")
        self.concepts = None

    @property
    def model(self):
        return self.reader.model

    @property
    def layer_path(self):
        return self.reader.layer_path

    def __repr__(self):
        return f"CRAFT(model={self.model.name!r}, layer={self.layer_path!r}, k={self.k})"

    def crops(self, batch):
        """``(crops (n, c, c, C), boxes (n, 3))`` of a channels-last batch, in image, row, column order."""
        height, width = (int(d) for d in batch.shape[1:3])
        size = self.crop_size or max(1, min(height, width) // 2)
        if size > min(height, width):
            raise ValueError(f"`crop_size` is {size}, larger than the {height}x{width} images; choose at most "
                             f"{min(height, width)}.")
        stride = self.stride or size
        x = np.asarray(_compat.to_host(batch))
        boxes = [(i, y, z) for i in range(len(x)) for y in range(0, height - size + 1, stride)
                 for z in range(0, width - size + 1, stride)]
        crops = np.stack([x[i, y:y + size, z:z + size] for i, y, z in boxes])
        return crops, np.asarray(boxes, np.int64)

    def _crop_activations(self, crops, size):
        resized = ops.image.resize(ops.convert_to_tensor(crops), size, interpolation="bilinear",
                                   antialias=False, data_format="channels_last")
        features, _ = self.reader.activations(resized)
        return features.mean(axis=tuple(range(1, features.ndim - 1)))

    def fit(self, images, target):
        """Find the concepts of class ``target`` on ``images`` (a batch of that class's images, as the model
        takes them); the result is returned and kept as :attr:`concepts` for :meth:`maps`.

        Raises:
            ValueError: for ``k`` larger than the channels, a crop larger than the
                images, negative activations, or a class the model does not have.
        """
        if isinstance(target, bool) or not isinstance(target, (int, np.integer)) or target < 0:
            raise ValueError(f"`target` must be a class index (an int >= 0); received {target!r}.")
        batch = self.reader.batch(images)
        size = tuple(int(d) for d in batch.shape[1:3])
        crops, boxes = self.crops(batch)
        acts = self._crop_activations(crops, size)
        channels = acts.shape[-1]
        if self.k > channels:
            raise ValueError(f"`k` is {self.k}, more concepts than layer {self.layer_path!r}'s {channels} channels; "
                             f"choose k <= {channels}.")
        if acts.min() < 0:
            raise ValueError(f"Layer {self.layer_path!r} has negative activations ({float(acts.min()):.3g}); CRAFT "
                             f"factorizes non-negative activations: choose a layer after a ReLU.")
        found = nmf(acts, self.k, iterations=self.iterations, seed=self.seed, tol=self.tol)
        u, w = found.coefficients.astype(np.float64), found.basis.astype(np.float64)
        peak = np.where(u.max(axis=0) > 0, u.max(axis=0), 1.0)
        u, w = u / peak, w * peak[:, None]
        features, scores = self.reader.activations(batch)
        if scores.shape[-1] and target >= scores.shape[-1]:
            raise ValueError(f"`target` is {target}; the model has {scores.shape[-1]} classes.")
        coefficients = self._coefficients(features, w)
        per_image = self._importance(batch, coefficients, w, int(target))
        order = np.argsort(-per_image.mean(axis=0), kind="stable")
        self.concepts = CraftConcepts(
            target=int(target), basis=w[order].astype(np.float32), importance=per_image.mean(axis=0)[order],
            importance_per_image=per_image[:, order], crop_coefficients=u[:, order].astype(np.float32),
            crops=crops, crop_boxes=boxes, error=float(found.errors[-1]), layer=str(self.layer_path))
        return self.concepts

    def _coefficients(self, features, basis):
        """``(N, *s, k)``: each position's coefficients on ``basis`` (NMF with the basis fixed, all images at once)."""
        n, spatial, channels = features.shape[0], features.shape[1:-1], features.shape[-1]
        v = np.maximum(features.reshape(n, -1, channels), 0.0)
        fixed = np.broadcast_to(np.asarray(basis, np.float32), (n,) + basis.shape)
        found = nmf(v, len(basis), iterations=self.iterations, seed=self.seed, tol=self.tol, basis=fixed)
        return found.coefficients.reshape((n,) + spatial + (len(basis),))

    def _importance(self, batch, coefficients, basis, target):
        """``(N, k)``: each image's total Sobol indices of the concept masks."""
        k = len(basis)
        design = sobol_design(k, self.n_designs, self.seed)
        shape = (len(design),) + (1,) * (coefficients.ndim - 2) + (k,)
        out = []
        for i in range(len(batch)):
            masked = coefficients[i][None] * design.reshape(shape)
            values = self.reader.edited_scores(batch[i:i + 1], masked, basis, target)
            out.append(sobol_total_indices(values, k))
        return np.stack(out)

    def maps(self, images, upsample=True, normalize=False):
        """Concept attribution maps of new ``images``: ``(N, k, *S)`` float32 (``(k, *S)`` for one image), each
        position's coefficient of each concept (1: as strong as the concept's strongest crop), upsampled as the
        CAMs are.

        Raises:
            ValueError: before :meth:`fit`.
        """
        if self.concepts is None:
            raise ValueError("CRAFT.maps reads the concepts found by CRAFT.fit(images, target); call fit first.")
        batch, single = self.reader.batch(images, one=True)
        features, _ = self.reader.activations(batch)
        coefficients = self._coefficients(features, self.concepts.basis)
        maps = np.moveaxis(coefficients, -1, 1)
        if upsample or normalize:
            maps = upsampled(maps, tuple(int(d) for d in batch.shape[1:-1]) if upsample else maps.shape[2:], normalize)
        maps = maps.astype(np.float32)
        return maps[0] if single else maps
