"""A model read at one layer for the concept methods: activations, and the head on edited activations.

:class:`LayerReader` captures the target layer's output with the library's
activation capture (:class:`keras_cam.graph.ActivationGraph`: the model is run
as it is, never modified) and runs the model with that output replaced
(``ActivationGraph.run(..., replace=...)``), which is how a concept's vector
or an image's edited activations are sent through the rest of the model, the
"head". Each computation is compiled once per input signature
(:mod:`keras_cam.compiled`) and runs in chunks of ``batch_size`` images.
"""

from __future__ import annotations

import numpy as np

from keras_cam import _compat
from keras_cam._compat import ops
from keras_cam.compiled import Compiled
from keras_cam.graph import ActivationGraph
from keras_cam.inputs import read_inputs
from keras_cam.layout import resize


def check_images(images, name="images"):
    """A batch ``(N, ...)`` of images of one shape, as float32 numpy (a list of equal arrays is stacked)."""
    if isinstance(images, (list, tuple)):
        shapes = {np.shape(im) for im in images}
        if len(shapes) > 1:
            listed = sorted(shapes, key=str)[:4]
            raise ValueError(f"`{name}` holds images of different shapes {listed}: the concept methods compare "
                             f"one layer's activations across images, so give images of one size (resize them).")
        if not images:
            raise ValueError(f"`{name}` is empty; give at least one image.")
    x = np.asarray(_compat.to_host(images) if not isinstance(images, (list, tuple)) else
                   [_compat.to_host(im) for im in images])
    if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise ValueError(f"`{name}` must be numeric images of one shape; received dtype {x.dtype}.")
    if x.ndim == 0 or len(x) == 0:
        raise ValueError(f"`{name}` is empty; give at least one image.")
    return x.astype(np.float32, copy=False)


class LayerReader:
    """The model of a concept method, read at ``layer`` (see the module docstring).

    Args:
        model: a Keras model (single input), never modified.
        layer: the layer (name, path, layer object, or None for the last
            spatial layer, as for the explainers).
        output, linearize, data_format, reshape: as for :class:`keras_cam.Explainer`.
        batch_size: images per compiled call.
    """

    def __init__(self, model, layer=None, *, output=None, linearize=True, batch_size=32, data_format=None,
                 reshape=None):
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"`batch_size` must be an int >= 1; received {batch_size!r}.")
        self.graph = ActivationGraph(model, [layer], output=output, linearize=linearize, data_format=data_format,
                                     reshape=reshape)
        if self.graph.multi_input:
            raise ValueError(f"Model {self.graph.model.name!r} has {len(self.graph.input_names)} inputs; the "
                             f"concept methods read single-input models.")
        self.batch_size = int(batch_size)
        self._read = Compiled(self._read_step, model=self.graph.model, eager_first=True)
        self._head = Compiled(self._head_step, model=self.graph.model, eager_first=True)
        self._edited = Compiled(self._edited_step, model=self.graph.model, eager_first=True)

    @property
    def model(self):
        return self.graph.model

    @property
    def layer_path(self):
        return self.graph.paths[0]

    def batch(self, images, name="images", one=False):
        """``images`` as a channels-last float32 tensor ``(N, *S, C)``; the layer is chosen on the first call.

        With ``one=True`` a single input is taken too, and ``(batch, single)`` is returned.
        """
        x = check_images(images, name)
        batch, _, single = read_inputs(self.graph, x)
        if single and not one:
            raise ValueError(f"`{name}` is one image of shape {tuple(x.shape)}; the concept methods compare "
                             f"several images: pass a batch (N, ...).")
        if not self.graph.ready:
            self.graph.prepare(self.graph.to_model_format(batch[:1]))
        return (batch, single) if one else batch

    # --- compiled steps -----------------------------------------------------------------------------

    def _read_step(self, x):
        raw, layouts, outputs = self.graph.capture(x)
        features = ops.cast(layouts[0].view(raw[0]), "float32")
        selected = self.graph.selected(outputs)
        scores = self.graph.scores(outputs) if len(selected.shape) == 2 else ops.zeros((x.shape[0], 0))
        return features, scores

    def _head_step(self, x, features):
        raw, layouts, _ = self.graph.capture(x)
        return self.graph.scores(self.graph.run(x, replace=layouts[0].unview(features, raw[0])))

    def _edited_step(self, x, rows, coefficients, basis, which):
        """Class ``which``'s score of image ``rows[r]`` of ``x`` with its activations replaced by
        ``coefficients[r] @ basis`` (``(m, *s, k)`` times ``(k, K)``): ``x`` runs once up to the layer
        (recorded), and only the rest of the model runs for each of the ``m`` rows."""
        raw, layouts, _, recording = self.graph.capture(x, record=True)
        features = ops.cast(ops.matmul(coefficients, basis), raw[0].dtype)
        outputs = self.graph.run(ops.take(x, rows, axis=0), rows=rows, recording=recording,
                                 replace=layouts[0].unview(features, ops.take(raw[0], rows, axis=0)))
        return ops.take(self.graph.scores(outputs), which, axis=1)

    # --- host calls ------------------------------------------------------------------------------------

    def activations(self, batch):
        """``(features (N, *s, K) float32, scores (N, C) float32)`` on the host, in chunks."""
        feats, scores = [], []
        n = int(batch.shape[0])
        for i in range(0, n, self.batch_size):
            f, s = self._read(batch[i:i + self.batch_size])
            feats.append(np.asarray(_compat.to_host(f), np.float32))
            scores.append(np.asarray(_compat.to_host(s), np.float32))
        return np.concatenate(feats), np.concatenate(scores)

    def head_scores(self, image, vectors, spatial):
        """``(k, C)``: the model's class scores when the layer outputs vector ``j`` at every
        position of its ``spatial`` grid (the other paths read ``image``, one channels-last input)."""
        vectors = np.asarray(vectors, np.float32)
        k = len(vectors)
        features = np.broadcast_to(vectors.reshape((k,) + (1,) * len(spatial) + (-1,)),
                                   (k,) + tuple(spatial) + (vectors.shape[-1],))
        x = ops.repeat(image[None], k, axis=0)
        return np.asarray(_compat.to_host(self._head(x, ops.convert_to_tensor(np.ascontiguousarray(features)))),
                          np.float32)

    def edited_scores(self, image, coefficients, basis, target):
        """Class ``target``'s score of ``image`` (one channels-last input ``(1, *S, C)``) with its
        activations replaced by ``coefficients[r] @ basis``, for every row ``r`` of ``coefficients``
        ``(m, *s, k)``, in chunks of ``batch_size`` rows: ``(m,)`` float64."""
        out = []
        basis = ops.convert_to_tensor(np.asarray(basis, np.float32))
        step = min(self.batch_size, len(coefficients))
        rows = ops.convert_to_tensor(np.zeros(step, np.int32))
        for i in range(0, len(coefficients), step):
            c = np.zeros((step,) + coefficients.shape[1:], np.float32)   # the last chunk padded: one trace
            m = len(coefficients[i:i + step])
            c[:m] = coefficients[i:i + step]
            s = self._edited(image, rows, ops.convert_to_tensor(c), basis, int(target))
            out.append(np.asarray(_compat.to_host(s), np.float64)[:m])
        return np.concatenate(out)


def upsampled(maps, size, normalize=False):
    """Per-concept maps ``(N, k, *s)`` resized to ``size`` as the CAMs are (:func:`keras_cam.layout.resize`),
    optionally min-max scaled per map."""
    maps = np.asarray(maps, np.float32)
    n, k, s = maps.shape[0], maps.shape[1], maps.shape[2:]
    flat = ops.convert_to_tensor(maps.reshape((n * k,) + s))
    if tuple(size) != tuple(s):
        flat = resize(flat, size)
    if normalize:
        from keras_cam.layout import minmax

        flat = minmax(flat)
    return np.asarray(_compat.to_host(flat), np.float32).reshape((n, k) + tuple(int(v) for v in size))
