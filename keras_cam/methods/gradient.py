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

import tensorflow as tf

from keras_cam import layout as _layout
from keras_cam.base import Explainer, upsample


class GradientExplainer(Explainer):
    """Base of gradient methods: runs the model under a tape, then combines A and G."""

    _weights_channels = True

    def raw_maps(self, images, class_idx, target_fn=None):
        acts, grads, scored = self.activations_and_gradients(images, class_idx, target_fn)
        return self.fuse([self.combine(a, g) for a, g in zip(acts, grads)]), scored

    def activations_and_gradients(self, images, class_idx, target_fn=None):
        """``(A, G, target_scores)``: per target layer the feature map and ``dS/dA``,
        float32 ``(N, *s, K)``, and the explained scores."""
        # Only what the activations feed is recorded: the eager first call then
        # backpropagates to the layer, not through the whole network's weights.
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            raw, layouts, outputs = self.graph.capture(images, tape)
            scored = self.target_scores(outputs, class_idx, target_fn)
        grads = tape.gradient(scored[0], raw)
        acts, out = [], []
        for path, lay, r, g in zip(self.graph.paths, layouts, raw, grads):
            if g is None:
                raise ValueError(
                    f"The explained score does not depend on layer {path!r} (no "
                    f"gradient flows from it). Choose a layer that feeds the output."
                )
            acts.append(tf.cast(lay.view(r), tf.float32))
            out.append(tf.cast(lay.view(g), tf.float32))
        return acts, out, scored

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
        return tf.reduce_mean(g, axis=_layout.spatial_axes(g))


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
        axes = _layout.spatial_axes(a)
        total = tf.reduce_sum(a, axis=axes, keepdims=True)
        alpha = tf.where(g != 0, tf.math.divide_no_nan(tf.ones_like(g), 2.0 + g * total), 0.0)
        return tf.reduce_sum(alpha * tf.nn.relu(g), axis=axes)


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
        return self.reduce_channels(tf.nn.relu(g) * a)

    def fuse(self, maps):
        if len(maps) == 1:
            return maps[0]
        sizes = [m.shape[1:].num_elements() for m in maps]
        size = tf.shape(maps[sizes.index(max(sizes))])[1:]
        scaled = []
        for m in maps:
            top = tf.reduce_max(m, axis=_layout.map_axes(m), keepdims=True)
            scaled.append(upsample(tf.tanh(self.gamma * tf.math.divide_no_nan(m, top)), size))
        return tf.reduce_max(tf.stack(scaled), axis=0)
