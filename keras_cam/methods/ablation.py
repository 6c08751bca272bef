"""Ablation-CAM: each channel weighted by how much the score drops without it.

Notation (per image): ``A`` is the activation ``(*s, K)`` of the target
layer seen as a feature map (``(h, w, K)`` for images; any layout of
:mod:`keras_cam.layout`), ``y`` the explained score of the clean input (the
class logit by default, or a target object's / callable's score) and
``y^(k)`` the same score when channel ``k`` of the target layer's output is
set to zero everywhere. No gradients are used.

The ablated passes of all (image, channel) pairs of a call are streamed
``batch_size`` at a time inside the explainer's compiled function
(:class:`~keras_cam.methods.streaming.StreamingExplainer`), and each runs
the model *from the target layer on*: the clean pass records the output of
every layer call that completes before the target's call
(``ActivationGraph.capture(..., record=True)``), and an ablated pass returns
those recorded outputs instead of computing them
(``ActivationGraph.run(..., recording=..., replace=...)``). The layers before
the target run once per image, whatever the number of channels.
"""

from __future__ import annotations

from keras_cam import layout as _layout
from keras_cam import targets as _targets
from keras_cam._compat import ops
from keras_cam.methods.score import stream_selected
from keras_cam.methods.streaming import StreamingExplainer

# The smallest |y| divided by: keeps the weights finite when the clean score is 0.
EPSILON = 1e-7


class AblationCAM(StreamingExplainer):
    """Ablation-CAM (Desai and Ramaswamy, WACV 2020).

    ``w_k = (y - y^(k)) / max(|y|, 1e-7)``, with ``y`` the explained score of
    the clean input and ``y^(k)`` the score with channel ``k`` of the target
    layer set to zero; map ``= ReLU(sum_k w_k A^k)``, then upsampled and
    normalized as for Grad-CAM (``eigen_smooth`` and ``aug_smooth`` apply as
    for Grad-CAM, see :class:`keras_cam.Explainer`).

    For ``y > 0`` this is the paper's ``(y - y^(k)) / y``. The paper does not
    say what happens otherwise; dividing by ``|y|`` keeps the sign's meaning
    for a negative score (``w_k > 0``: removing channel ``k`` lowers the
    score, so the channel supports it), and the floor ``1e-7`` keeps the
    weights finite when ``y`` is 0. Dividing every weight of an image by the
    same positive number only scales its map, which the normalization removes.

    Channel ``k`` is the ``k``-th channel of the feature map: of every
    position of a channels-first map, of every patch token of a vision
    transformer's token layer (the class / register tokens, which are no
    position, keep their values).

    A channel that is zero everywhere is not run: ablating it changes
    nothing, so ``y^(k) = y`` and ``w_k = 0``. Every other channel costs one
    forward pass, from the target layer on: the layers before the target
    run once per image, on the clean pass, and the ablated passes reuse their
    recorded outputs (a skip connection from before the target to after it
    reads them too). For a target inside a SavedModel (an op of a
    ``tf.saved_model.load`` model, a TF-Hub ``KerasLayer`` or a ``TFSMLayer``)
    the ablated passes run the whole model, the op's output replaced.

    A target object or callable ``f(outputs) -> (N,)`` gives the score ``y``
    itself; a class target's score is the class's logit (its output, e.g. a
    probability, with ``linearize=False``).

    Args:
        model: a Keras model; never modified.
        layer: the target layer (see :class:`keras_cam.Explainer`).
        output: for multi-output models, the output holding the class scores.
        linearize: score the logit before a final softmax/sigmoid (the
            default, as the paper); False scores the model's own output.
        batch_size: ablated passes per forward pass, and images per call.
            Lower it if the model runs out of memory.
        verbose: 0 (the default) is silent, 1 draws a progress bar over the ablated passes.
        aug_smooth: see :class:`keras_cam.Explainer`.
        eigen_smooth: see :class:`keras_cam.Explainer`.
        image_input: see :class:`keras_cam.Explainer`.
        data_format: see :class:`keras_cam.Explainer`.
        reshape: for a vision transformer's token layer, its patch grid: None
            (inferred) or ``(h, w)``. A callable is not accepted: an ablated
            channel is written back into the token sequence, which needs the
            grid's inverse.

    Example:
        >>> cam = keras_cam.AblationCAM(model, batch_size=64)
        >>> maps = cam(images)                             # (N, H, W) in [0, 1]
        >>> maps = cam(images, targets=[3, 7])             # one class per image
    """

    _weights_channels = True

    def __init__(self, model, layer=None, *, output=None, linearize=True, batch_size=32, verbose=0,
                 aug_smooth=False, eigen_smooth=False, image_input=None, data_format=None, reshape=None):
        if callable(reshape):
            raise ValueError(
                f"AblationCAM writes each ablated channel back into the target layer's output, "
                f"which needs the inverse of `reshape`; a callable has none (received {reshape!r}). "
                f"Pass `reshape=(h, w)`, the token grid, or None to infer it."
            )
        super().__init__(model, layer, output=output, linearize=linearize, batch_size=batch_size,
                         verbose=verbose, aug_smooth=aug_smooth, eigen_smooth=eigen_smooth,
                         image_input=image_input, data_format=data_format, reshape=reshape)

    def raw_maps(self, images, class_idx, target_fn=None):
        raw, layouts, outputs, recording = self.graph.capture(images, record=True)
        scored = self.target_scores(outputs, class_idx, target_fn)
        a = ops.cast(layouts[0].view(raw[0]), "float32")
        live = self.channels(a)
        ablated = self.ablated_scores(images, raw[0], layouts[0], recording, live, scored[1], target_fn)
        y = scored[0][:, None]
        w = ops.where(live, (y - ablated) / ops.maximum(ops.abs(y), EPSILON), 0.0)
        return self.reduce_channels(_layout.weigh_channels(a, w)), scored

    @staticmethod
    def channels(a):
        """``(N, K)`` bool: the channels to ablate, those not zero everywhere."""
        return ops.any(ops.not_equal(a, 0), axis=_layout.spatial_axes(a))

    def ablated_scores(self, images, raw, layout, recording, live, idx, target_fn=None):
        """``(N, K)``: the score ``y^(k)`` with channel ``k`` zeroed, for every live pair; 0 elsewhere.

        Args:
            images: the clean channels-last batch ``(N, *S, C)``.
            raw: the target layer's raw output on it (its own layout).
            layout: the target's :class:`~keras_cam.layout.FeatureLayout`.
            recording: the clean pass's :class:`~keras_cam.replay.Recording`.
            live: ``(N, K)`` bool, the pairs to run.
            idx: ``(N,)`` the classes explained (for class targets).
            target_fn: the bound target object or callable, or None.
        """
        features = layout.view(raw)
        k = int(features.shape[-1])
        shape = (-1,) + (1,) * (len(features.shape) - 2) + (k,)
        one_image = features.shape[0] == 1  # every row of a chunk is that image: broadcast, no gather

        def scores(chunk):
            which, channel = chunk[:, 0], chunk[:, 1]
            # (b, 1.., K): 0 at the ablated channel, 1 elsewhere. One multiply makes the
            # ablated copies (the cheapest way on CPU: a select costs more; activations
            # are finite, so 0 * A is 0).
            keep = ops.reshape(1.0 - ops.one_hot(channel, k, dtype=features.dtype), shape)
            ablated = (features if one_image else ops.take(features, which, axis=0)) * keep
            outputs = self.graph.run(ops.take(images, which, axis=0), rows=which, recording=recording,
                                     replace=layout.unview(ablated, ops.take(raw, which, axis=0)))
            s, _, _ = self.target_scores(outputs, ops.take(idx, which, axis=0), _targets.rows(target_fn, which))
            return chunk, s

        return stream_selected(self, live, 1, scores, ops.zeros(tuple(live.shape), "float32"))
