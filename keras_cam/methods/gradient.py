"""Methods that weight the target layer's activations with gradients.

Notation (per image): ``A`` is the activation ``(*s, K)`` of the target
layer seen as a feature map (``(h, w, K)`` for images; any layout of
:mod:`keras_cam.layout`), ``S`` the explained score (the pre-softmax logit
of the target class by default) and ``G = dS/dA`` its gradient; sums and
means over ``ij`` run over every spatial position. Each method is a weight per
channel ``w_k(A, G)``; the map is ``ReLU(sum_k w_k A^k)``. Layer-CAM weights
every pixel of every channel instead.
"""

from __future__ import annotations

import math

from keras_cam import backend as _backend
from keras_cam import layout as _layout
from keras_cam import targets as _targets
from keras_cam._compat import ops
from keras_cam.base import Explainer, pooled_channels, principal_component, upsample
from keras_cam.methods.streaming import (StreamingExplainer, check_positive_int, check_noise, check_seed, grid,
                                         input_range, seeded_normal)


class GradientExplainer(Explainer):
    """Base of gradient methods: runs the model once with gradients, then combines A and G."""

    _weights_channels = True

    def raw_maps(self, images, class_idx, target_fn=None):
        acts, grads, scored = self.activations_and_gradients(images, class_idx, target_fn)
        return self.fuse([self.combine(a, g) for a, g in zip(acts, grads)]), scored

    @property
    def fuses_features(self):
        """Whether the maps come from one pass of :meth:`activations_and_gradients` on the images
        themselves (this class's :meth:`raw_maps`, no ``aug_smooth``): that pass's activations and
        outputs are then the features (see :meth:`raw_maps_and_features`)."""
        return not self.aug_smooth and type(self).raw_maps is GradientExplainer.raw_maps

    def raw_maps_and_features(self, images, class_idx, target_fn=None):
        """:meth:`raw_maps` and, from the same forward pass, the first target layer's activations
        pooled over positions and the class scores (see ``Explainer.pooled_features``); a method with its
        own :meth:`raw_maps` gets them from a second pass."""
        if type(self).raw_maps is not GradientExplainer.raw_maps:
            return super().raw_maps_and_features(images, class_idx, target_fn)
        acts, grads, scored, scores = self.activations_and_gradients(images, class_idx, target_fn, scores=True)
        maps = self.fuse([self.combine(a, g) for a, g in zip(acts, grads)])
        return maps, scored, (ops.stop_gradient(pooled_channels(acts[0])), ops.stop_gradient(scores))

    def activations_and_gradients(self, images, class_idx, target_fn=None, rows=None, scores=False):
        """``(A, G, target_scores)``: per target layer the feature map and ``dS/dA``,
        float32 ``(N, *s, K)``, and the explained scores (``rows``: the held inputs'
        rows that go with ``images``, see ``ActivationGraph.model_inputs``). With
        ``scores``, then the class scores ``(N, C)`` of the same pass (``ActivationGraph.scores``)."""
        # Only the activations are differentiated: the backward pass stops at the layer.
        found = {}

        def forward(tap):
            _, found["layouts"], outputs = self.graph.capture(images, tap, rows=rows)
            scored = self.target_scores(outputs, class_idx, target_fn)
            return scored[0], ((scored, self.graph.scores(outputs)) if scores else scored)

        _, aux, raw, grads, _ = _backend.tapped_gradients(forward)
        scored, classes = aux if scores else (aux, None)
        acts, out = [], []
        for i, (path, lay) in enumerate(zip(self.graph.paths, found["layouts"])):
            r, g = raw[i], grads.get(i)
            if g is None:
                raise ValueError(
                    f"The explained score does not depend on layer {path!r} (no "
                    f"gradient flows from it). Choose a layer that feeds the output."
                    + self.graph.output_spec.implicit_note()
                )
            acts.append(ops.cast(lay.view(r), "float32"))
            out.append(ops.cast(lay.view(g), "float32"))
        return (acts, out, scored, classes) if scores else (acts, out, scored)

    def combine(self, a, g):
        """``ReLU(sum_k w_k A^k)`` with the method's channel weights."""
        w = self.channel_weights(a, g)
        return self.reduce_channels(_layout.weigh_channels(a, w))

    def fuse(self, maps):
        """One map from the target layers' maps (a single layer: its map)."""
        return maps[0]

    @staticmethod
    def channel_weights(a, g):
        """``(N, K)`` weights from activations and gradients ``(N, *s, K)``."""
        raise NotImplementedError


class GradCAM(GradientExplainer):
    """Grad-CAM (Selvaraju et al., ICCV 2017).

    ``w_k = mean_ij dS/dA^k_ij``; map ``= ReLU(sum_k w_k A^k)``.

    With ``counterfactual=True`` the gradient is negated (section 5 of the
    paper): ``w_k = mean_ij -dS/dA^k_ij``, the regions whose removal would
    raise the score ``S`` (the evidence against the class).

    Args:
        model: a Keras model; never modified.
        layer: the target layer (see :class:`keras_cam.Explainer`).
        counterfactual: negate the gradient, to show the evidence against the class.
        **kwargs: the options of :class:`keras_cam.Explainer` (``output``,
            ``linearize``, ``batch_size``, ``aug_smooth``, ``eigen_smooth``,
            ``image_input``, ``data_format``).

    Example:
        >>> cam = keras_cam.GradCAM(model)            # last spatial layer
        >>> maps = cam(images)                         # (N, H, W) in [0, 1]
        >>> maps = cam(images, targets=[3, 7])         # one class per image
        >>> against = keras_cam.GradCAM(model, counterfactual=True)(images)
    """

    def __init__(self, model, layer=None, *, counterfactual=False, **kwargs):
        super().__init__(model, layer, **kwargs)
        self.counterfactual = bool(counterfactual)

    def combine(self, a, g):
        return super().combine(a, -g if self.counterfactual else g)

    @staticmethod
    def channel_weights(a, g):
        return ops.mean(g, axis=_layout.spatial_axes(g))


class GradCAMPlusPlus(GradientExplainer):
    """Grad-CAM++ (Chattopadhyay et al., WACV 2018, eq. 19 with an exponential score).

    With ``g = dS/dA``:
    ``alpha_ij^k = g^2 / (2 g^2 + sum_ab A^k_ab g^3)`` (0 where the denominator is 0),
    ``w_k = sum_ij alpha_ij^k ReLU(g_ij^k)``; map ``= ReLU(sum_k w_k A^k)``.

    Computed as ``alpha = 1 / (2 + g sum_ab A_ab)`` where ``g != 0``: the same
    value with the common factor ``g^2`` cancelled, so huge activations or
    gradients cannot overflow a cube (float16 or float32).
    """

    @staticmethod
    def channel_weights(a, g):
        a, g = ops.convert_to_tensor(a), ops.convert_to_tensor(g)  # numpy and torch tensors do not mix
        axes = _layout.spatial_axes(a)
        total = ops.sum(a, axis=axes, keepdims=True)
        alpha = ops.where(g != 0, ops.divide_no_nan(ops.ones_like(g), 2.0 + g * total), 0.0)
        return ops.sum(alpha * ops.relu(g), axis=axes)


class LayerCAM(GradientExplainer):
    """Layer-CAM (Jiang et al., IEEE TIP 2021).

    Every position has its own weight: ``w^k_ij = ReLU(dS/dA^k_ij)``; map
    ``= ReLU(sum_k w^k_ij A^k_ij)``. Because a weight is not averaged over the
    map, shallow (high-resolution) layers give usable, fine-grained maps.

    Args:
        model: a Keras model; never modified.
        layer: the target layer (see :class:`keras_cam.Explainer`).
        layers: several target layers whose maps are fused (instead of
            ``layer``): each map ``M`` is scaled to ``tanh(gamma * M / max M)``
            (section III-C of the paper; ``gamma = 2`` lifts the weak maps of
            shallow layers), upsampled bilinearly to the largest layer's
            resolution, and the maps are fused by their element-wise maximum.
        gamma: the scaling of the fusion.
        **kwargs: the options of :class:`keras_cam.Explainer`.

    Example:
        >>> fine = keras_cam.LayerCAM(model, layer="block3_conv3")(images)
        >>> fused = keras_cam.LayerCAM(model, layers=["block3_conv3", "block4_conv3", "block5_conv3"])
    """

    def __init__(self, model, layer=None, *, layers=None, gamma=2.0, **kwargs):
        if layers is not None:
            if layer is not None:
                raise ValueError("Pass either `layer` (one target layer) or `layers` (several to fuse), not both.")
            if isinstance(layers, str) or not isinstance(layers, (list, tuple)) or not layers:
                raise TypeError(
                    f"`layers` must be a non-empty list of layer names, paths or layers; "
                    f"received {layers!r}."
                )
        if not gamma > 0:
            raise ValueError(f"`gamma` must be positive; received {gamma!r}.")
        self._fused_layers = list(layers) if layers is not None else None
        self.gamma = float(gamma)
        super().__init__(model, layer, **kwargs)

    def _layer_specs(self, layer):
        return self._fused_layers or [layer]

    def combine(self, a, g):
        return self.reduce_channels(ops.relu(g) * a)

    def fuse(self, maps):
        if len(maps) == 1:
            return maps[0]
        sizes = [math.prod(int(d) for d in m.shape[1:]) for m in maps]
        size = maps[sizes.index(max(sizes))].shape[1:]
        scaled = []
        for m in maps:
            top = ops.max(m, axis=_layout.map_axes(m), keepdims=True)
            scaled.append(upsample(ops.tanh(self.gamma * ops.divide_no_nan(m, top)), size))
        return ops.max(ops.stack(scaled), axis=0)


class XGradCAM(GradientExplainer):
    """XGrad-CAM (Fu et al., BMVC 2020).

    ``w_k = sum_ij A^k_ij g^k_ij / (sum_ij A^k_ij + 1e-7)`` with ``g = dS/dA``:
    the gradient averaged over the positions with the activation as
    weights (the weights the paper derives from its sensitivity and
    conservation axioms); map ``= ReLU(sum_k w_k A^k)``.

    Takes the options of :class:`keras_cam.Explainer`.

    Args:
        model: a Keras model; never modified.
        layer: the target layer (see :class:`keras_cam.Explainer`).

    Example:
        >>> maps = keras_cam.XGradCAM(model)(images)          # (N, H, W) in [0, 1]
    """

    @staticmethod
    def channel_weights(a, g):
        axes = _layout.spatial_axes(a)
        return ops.sum(a * g, axis=axes) / (ops.sum(a, axis=axes) + 1e-7)


class HiResCAM(GradientExplainer):
    """HiResCAM (Draelos and Carin, 2020).

    The gradient multiplies the activation position by position, without
    spatial averaging: map ``= ReLU(sum_k g^k * A^k)`` with ``g = dS/dA``. The
    map is then exactly how much each position contributes to ``S`` to
    first order; where the gradient is constant over the positions of each
    channel (``GlobalAveragePooling`` and then ``Dense``) it equals Grad-CAM.
    ``eigen_smooth`` takes the principal component of ``g * A``.

    Takes the options of :class:`keras_cam.Explainer`.

    Args:
        model: a Keras model; never modified.
        layer: the target layer (see :class:`keras_cam.Explainer`).

    Example:
        >>> maps = keras_cam.HiResCAM(model)(images, targets=3)
    """

    def combine(self, a, g):
        return self.reduce_channels(g * a)


class GradCAMElementWise(GradientExplainer):
    """Element-wise Grad-CAM (pytorch-grad-cam's ``GradCAMElementWise``).

    HiResCAM with the ReLU taken per channel before the sum: map
    ``= sum_k ReLU(g^k * A^k)`` with ``g = dS/dA``, so that positive and
    negative contributions of different channels do not cancel.
    ``eigen_smooth`` takes the principal component of ``ReLU(g * A)``.

    Takes the options of :class:`keras_cam.Explainer`.

    Args:
        model: a Keras model; never modified.
        layer: the target layer (see :class:`keras_cam.Explainer`).

    Example:
        >>> maps = keras_cam.GradCAMElementWise(model)(images)
    """

    def combine(self, a, g):
        return self.reduce_channels(ops.relu(g * a))


class EigenGradCAM(GradientExplainer):
    """Eigen-Grad-CAM: Eigen-CAM of the gradient-weighted activations.

    Map ``= ReLU(P(g * A))``, where ``P`` projects each position's channel
    vector of ``g * A`` (``g = dS/dA``), centred over the positions, on their
    first principal axis, its sign chosen so that the projection correlates
    positively with ``sum_k g^k A^k`` (as :class:`keras_cam.EigenCAM`). Unlike
    Eigen-CAM it depends on the target class.

    The map already is a principal component, so ``eigen_smooth`` does not
    apply (it would compute the same map).

    Takes the options of :class:`keras_cam.Explainer` but ``eigen_smooth``.

    Args:
        model: a Keras model; never modified.
        layer: the target layer (see :class:`keras_cam.Explainer`).

    Example:
        >>> maps = keras_cam.EigenGradCAM(model)(images, targets=[1, 4])
    """

    _weights_channels = False

    def combine(self, a, g):
        return ops.relu(principal_component(g * a))


class SmoothGradCAMPlusPlus(StreamingExplainer, GradientExplainer):
    """Smooth Grad-CAM++ (Omeiza et al., 2019).

    Grad-CAM++ whose gradient powers are averaged over ``samples`` noisy
    copies ``x_j = x + sigma eps_j`` of each image, ``eps_j ~ N(0, 1)`` per
    input value and ``sigma = noise * (max x - min x)`` per image. With ``A``
    the activation of the clean image, ``g_j = dS/dA`` at ``x_j`` and
    ``G_p = mean_j g_j^p`` (``p = 1, 2, 3``):
    ``alpha_ij^k = G2 / (2 G2 + sum_ab A^k_ab G3)`` (0 where the denominator
    is 0), ``w_k = sum_ij alpha_ij^k ReLU(G1_ij^k)``; map
    ``= ReLU(sum_k w_k A^k)``. ``noise=0`` is :class:`GradCAMPlusPlus` (one pass per image). The
    class explained in every noisy copy is the one chosen on the clean image.

    The ``(image, sample)`` pairs stream through the model ``batch_size`` at
    a time (:class:`~keras_cam.methods.streaming.StreamingExplainer`), each
    a forward and backward pass. The draw ``eps_j`` depends only on
    ``(seed, j)``: every image gets the same draws, alone or in any batch,
    and a seeded run is reproducible.

    Args:
        model: a Keras model; never modified.
        layer: the target layer (see :class:`keras_cam.Explainer`).
        samples: noisy copies per image.
        noise: the noise's standard deviation, as a fraction of each image's
            value range ``max x - min x``; 0 adds none.
        seed: the seed of the noise.
        batch_size: noisy copies per forward pass, and images per call.
        verbose: 0 (the default) is silent, 1 draws a progress bar over the passes.
        **kwargs: the options of :class:`keras_cam.Explainer`.

    Example:
        >>> cam = keras_cam.SmoothGradCAMPlusPlus(model, samples=16, noise=0.15, verbose=0)
        >>> maps = cam(images)                               # (N, H, W) in [0, 1]
    """

    def __init__(self, model, layer=None, *, samples=8, noise=0.2, seed=0, batch_size=32, verbose=0, **kwargs):
        self.samples = check_positive_int("samples", samples, "noisy copies per image")
        self.noise = check_noise(noise)
        self.seed = check_seed(seed)
        super().__init__(model, layer, batch_size=batch_size, verbose=verbose, **kwargs)

    def raw_maps(self, images, class_idx, target_fn=None):
        acts, outputs = self.graph.forward(images)
        scored = self.target_scores(outputs, class_idx, target_fn)
        a = ops.cast(acts[0], "float32")
        moments = self.gradient_moments(images, a, scored[1], target_fn)
        g1, g2, g3 = moments[..., 0], moments[..., 1], moments[..., 2]
        # The moments are float64 (where the backend has it): a cube of a large gradient
        # does not overflow float32.
        a64 = ops.cast(a, moments.dtype)
        axes = _layout.spatial_axes(a)
        den = 2.0 * g2 + ops.sum(a64, axis=axes, keepdims=True) * g3
        alpha = ops.where(den != 0, g2 / ops.where(den != 0, den, ops.ones_like(den)), ops.zeros_like(den))
        w = ops.cast(ops.sum(alpha * ops.relu(g1), axis=axes), "float32")
        return self.reduce_channels(_layout.weigh_channels(a, w)), scored

    def gradient_moments(self, images, a, idx, target_fn=None):
        """``(N, *s, K, 3)`` float64 (float32 on JAX without x64): ``mean_j g_j^p`` for
        ``p = 1, 2, 3`` over the noisy copies.

        Args:
            images: the clean channels-last images ``(N, *S, C)``.
            a: their feature maps ``(N, *s, K)`` (for the shape).
            idx: ``(N,)`` the classes explained (chosen on the clean images).
            target_fn: a bound target or None.
        """
        samples = 1 if self.noise == 0 else self.samples  # noiseless copies are all the same
        sigma = self.noise * input_range(images)
        items = grid(images.shape[0], samples)  # (N * samples, 2): image, sample
        shape = tuple(images.shape[1:])
        wide = _backend.wide_float()

        def moments(chunk):
            which = chunk[:, 0]
            eps = seeded_normal(self.seed, chunk[:, 1], shape)
            scale = ops.reshape(ops.take(sigma, which, axis=0), (-1,) + (1,) * (len(images.shape) - 1))
            noisy = ops.take(images, which, axis=0) + scale * eps
            _, grads, _ = self.activations_and_gradients(
                noisy, ops.take(idx, which, axis=0), _targets.rows(target_fn, which), rows=which)
            g = ops.cast(grads[0], wide)
            return which[:, None], ops.stack([g, g * g, g * g * g], axis=-1) / samples

        initial = ops.zeros(tuple(a.shape) + (3,), wide)
        return self.stream(items, moments, initial)

