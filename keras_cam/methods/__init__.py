"""The methods, grouped by what they need from the model, and their names.

``METHODS`` maps a short name (what the ``keras-cam`` command and the demo
use) to ``"module:Class"`` of an explainer that returns ``(N, H, W)`` maps;
the class is imported when it is asked for, so listing names costs nothing.
To register a method, add one line here. (Guided Backprop and Guided
Grad-CAM return ``(N, H, W, C)`` gradient images, not maps, and are not
listed.)

    >>> from keras_cam import methods
    >>> methods.get("gradcam++")           # -> keras_cam.GradCAMPlusPlus
    >>> methods.names()                    # ['gradcam', 'gradcampp', ...]
    >>> cam = methods.create("scorecam", model, layer="conv4_relu")
"""

from __future__ import annotations

import importlib
import inspect

METHODS = {
    "gradcam": "keras_cam.methods.gradient:GradCAM",
    "gradcampp": "keras_cam.methods.gradient:GradCAMPlusPlus",
    "scorecam": "keras_cam.methods.score:ScoreCAM",
    "layercam": "keras_cam.methods.gradient:LayerCAM",
    "eigencam": "keras_cam.methods.activation:EigenCAM",
    "cam": "keras_cam.methods.activation:CAM",
    "xgradcam": "keras_cam.methods.gradient:XGradCAM",
    "hirescam": "keras_cam.methods.gradient:HiResCAM",
    "gradcamelementwise": "keras_cam.methods.gradient:GradCAMElementWise",
    "eigengradcam": "keras_cam.methods.gradient:EigenGradCAM",
    "smoothgradcampp": "keras_cam.methods.gradient:SmoothGradCAMPlusPlus",
    "fem": "keras_cam.methods.activation:FEM",
    "ablationcam": "keras_cam.methods.ablation:AblationCAM",
    "iscam": "keras_cam.methods.score:ISCAM",
    "sscam": "keras_cam.methods.score:SSCAM",
    "saliency": "keras_cam.methods.attribution:Saliency",
    "smoothgrad": "keras_cam.methods.attribution:SmoothGrad",
    "integratedgradients": "keras_cam.methods.attribution:IntegratedGradients",
    "fullgrad": "keras_cam.methods.fullgrad:FullGrad",
    "randomcam": "keras_cam.methods.activation:RandomCAM",
    "shapleycam": "keras_cam.methods.shapley:ShapleyCAM",
    "finercam": "keras_cam.methods.finer:FinerCAM",
    "kpcacam": "keras_cam.methods.kpca:KPCACAM",
    "occlusion": "keras_cam.methods.blackbox:Occlusion",
    "rise": "keras_cam.methods.blackbox:RISE",
    "sobolattribution": "keras_cam.methods.blackbox:SobolAttribution",
    "hsicattribution": "keras_cam.methods.blackbox:HSICAttribution",
    "lime": "keras_cam.methods.surrogate:LIME",
    "kernelshap": "keras_cam.methods.surrogate:KernelSHAP",
    "attentionrollout": "keras_cam.methods.attention:AttentionRollout",
    "gradientrollout": "keras_cam.methods.attention:GradientRollout",
    "legrad": "keras_cam.methods.attention:LeGrad",
}

#: Short spellings of registered names (the papers' and peers' own: xplique's ``SobolAttributionMethod``
#: and ``HsicAttributionMethod`` are "Sobol" and "HSIC" in their papers' titles).
ALIASES = {"sobol": "sobolattribution", "hsic": "hsicattribution"}


def canonical(name: str) -> str:
    """The registry key for a spelling: case, ``-``, ``_`` and spaces ignored, ``++`` read as ``pp``.

    ``"Grad-CAM++"``, ``"grad_cam_pp"`` and ``"gradcampp"`` are the same name; a short
    spelling in :data:`ALIASES` (``"sobol"``, ``"hsic"``) reads as its full name.
    """
    key = "".join(name.lower().replace("++", "pp").replace("+", "p").split()).replace("-", "").replace("_", "")
    return ALIASES.get(key, key)


#: The methods that read a transformer's attention layers (:mod:`keras_cam.methods.attention`): they
#: explain models that have one (``keras.layers.MultiHeadAttention``), and refuse others with a clear error.
ATTENTION = ("attentionrollout", "gradientrollout", "legrad")


def names(attention=True) -> list:
    """The registered method names, in registration order; ``attention=False`` leaves out
    :data:`ATTENTION`, the methods for transformers only (for code that runs every method on any model)."""
    return [n for n in METHODS if attention or n not in ATTENTION]


def get(name: str):
    """The explainer class registered as ``name`` (any spelling :func:`canonical` accepts).

    Raises:
        ValueError: when no method has that name; the message lists them.
        TypeError: when ``name`` is not a string.
    """
    if not isinstance(name, str):
        raise TypeError(f"A method name must be a string such as 'gradcam'; received {type(name).__name__}.")
    key = canonical(name)
    if key not in METHODS:
        raise ValueError(f"Unknown method {name!r}; choose one of {', '.join(METHODS)}.")
    module, _, attr = METHODS[key].partition(":")
    return getattr(importlib.import_module(module), attr)


def create(name: str, model, layer=None, **kwargs):
    """``get(name)(model, layer=layer, **kwargs)``, silent: methods that draw their own
    progress bar (``verbose``) are built with ``verbose=0`` unless told otherwise.

    Methods without a target layer (``uses_layer = False``: the attributions at
    the input, Saliency, SmoothGrad, Integrated Gradients, FullGrad) are built
    without ``layer``, so one call builds any method the same way.
    """
    cls = get(name)
    if _accepts(cls, "verbose"):
        kwargs.setdefault("verbose", 0)
    if not cls.uses_layer:
        return cls(model, **kwargs)
    return cls(model, layer=layer, **kwargs)


def _accepts(cls, argument):
    """Whether ``cls(...)`` takes ``argument``: named by its ``__init__`` or, through
    ``**kwargs``, by a base class's (ISCAM passes its options on to ScoreCAM)."""
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters
        if argument in params:
            return True
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return False
    return False
