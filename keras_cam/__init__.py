"""keras-cam: class-activation maps for Keras models.

Shows where a CNN looked when it made a prediction (Grad-CAM, Grad-CAM++ and
their family), for Keras 3 on TensorFlow, JAX and PyTorch (``KERAS_BACKEND``),
and for legacy tf-keras.

The public names are imported when first used (PEP 562): ``import keras_cam``
alone imports no backend, so that the ``keras-cam`` command (the module
``keras_cam.cli``, which imports this package first) can answer ``--help``
before one loads; on JAX and PyTorch, TensorFlow is never imported.
``from keras_cam import GradCAM`` works as always.
"""

import importlib
import importlib.util
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# Public name -> the module that defines it.
_EXPORTS = {
    "AblationCAM": "keras_cam.methods.ablation",
    "AttentionRollout": "keras_cam.methods.attention",
    "Audit": "keras_cam.audit.core",
    "CAM": "keras_cam.methods.activation",
    "CAMCallback": "keras_cam.callbacks",
    "CRAFT": "keras_cam.concepts.craft",
    "Cluster": "keras_cam.audit.core",
    "DeepFeatureFactorization": "keras_cam.concepts.dff",
    "EigenCAM": "keras_cam.methods.activation",
    "EigenGradCAM": "keras_cam.methods.gradient",
    "Explainer": "keras_cam.base",
    "Explanation": "keras_cam.base",
    "FEM": "keras_cam.methods.activation",
    "FinerCAM": "keras_cam.methods.finer",
    "FullGrad": "keras_cam.methods.fullgrad",
    "GradCAM": "keras_cam.methods.gradient",
    "GradCAMElementWise": "keras_cam.methods.gradient",
    "GradCAMPlusPlus": "keras_cam.methods.gradient",
    "GeneratedToken": "keras_cam.multimodal",
    "GradientRollout": "keras_cam.methods.attention",
    "GuidedBackprop": "keras_cam.methods.guided",
    "GuidedGradCAM": "keras_cam.methods.guided",
    "HSICAttribution": "keras_cam.methods.blackbox",
    "HiResCAM": "keras_cam.methods.gradient",
    "ISCAM": "keras_cam.methods.score",
    "IntegratedGradients": "keras_cam.methods.attribution",
    "KPCACAM": "keras_cam.methods.kpca",
    "KernelSHAP": "keras_cam.methods.surrogate",
    "LIME": "keras_cam.methods.surrogate",
    "LayerCAM": "keras_cam.methods.gradient",
    "LeGrad": "keras_cam.methods.attention",
    "Occlusion": "keras_cam.methods.blackbox",
    "QueryDetection": "keras_cam.multimodal",
    "RISE": "keras_cam.methods.blackbox",
    "RandomCAM": "keras_cam.methods.activation",
    "SSCAM": "keras_cam.methods.score",
    "Saliency": "keras_cam.methods.attribution",
    "SanityResult": "keras_cam.sanity",
    "ScoreCAM": "keras_cam.methods.score",
    "ShapleyCAM": "keras_cam.methods.shapley",
    "SmoothGrad": "keras_cam.methods.attribution",
    "SmoothGradCAMPlusPlus": "keras_cam.methods.gradient",
    "SobolAttribution": "keras_cam.methods.blackbox",
    "TextSimilarity": "keras_cam.multimodal",
    "VizGradCAM": "keras_cam.vizgradcam",
    "XGradCAM": "keras_cam.methods.gradient",
    "audit": None,  # a submodule that is also callable: keras_cam.audit(explainer, data, ...)
    "explain_dataset": "keras_cam.dataset",
    "explain_texts": "keras_cam.multimodal",
    "flatten_model": "keras_cam.flatten",
    "gradient_image": "keras_cam.methods.guided",
    "list_attention_layers": "keras_cam.attention",
    "list_layers": "keras_cam.layers",
    "metrics": None,  # a submodule
    "overlay": "keras_cam.viz",
    "plot": "keras_cam.viz",
    "sanity_check": "keras_cam.sanity",
    "text_inputs": "keras_cam.multimodal",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # the same names for static tools (IDEs, the docs' API reference)
    from keras_cam import audit, metrics
    from keras_cam.audit.core import Audit, Cluster
    from keras_cam.base import Explainer, Explanation
    from keras_cam.callbacks import CAMCallback
    from keras_cam.concepts.craft import CRAFT
    from keras_cam.concepts.dff import DeepFeatureFactorization
    from keras_cam.dataset import explain_dataset
    from keras_cam.flatten import flatten_model
    from keras_cam.layers import list_layers
    from keras_cam.attention import list_attention_layers
    from keras_cam.methods.ablation import AblationCAM
    from keras_cam.methods.attention import AttentionRollout, GradientRollout, LeGrad
    from keras_cam.methods.activation import CAM, FEM, EigenCAM, RandomCAM
    from keras_cam.methods.attribution import IntegratedGradients, Saliency, SmoothGrad
    from keras_cam.methods.blackbox import RISE, HSICAttribution, Occlusion, SobolAttribution
    from keras_cam.methods.finer import FinerCAM
    from keras_cam.methods.fullgrad import FullGrad
    from keras_cam.methods.gradient import (EigenGradCAM, GradCAM, GradCAMElementWise, GradCAMPlusPlus, HiResCAM, LayerCAM,
                                           SmoothGradCAMPlusPlus, XGradCAM)
    from keras_cam.methods.guided import GuidedBackprop, GuidedGradCAM, gradient_image
    from keras_cam.methods.kpca import KPCACAM
    from keras_cam.methods.score import ISCAM, SSCAM, ScoreCAM
    from keras_cam.methods.shapley import ShapleyCAM
    from keras_cam.methods.surrogate import LIME, KernelSHAP
    from keras_cam.multimodal import GeneratedToken, QueryDetection, TextSimilarity, explain_texts, text_inputs
    from keras_cam.sanity import SanityResult, sanity_check
    from keras_cam.viz import overlay, plot
    from keras_cam.vizgradcam import VizGradCAM


def __getattr__(name):
    if name in _EXPORTS and _EXPORTS[name] is not None:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif not name.startswith("__") and importlib.util.find_spec(f"keras_cam.{name}") is not None:
        value = importlib.import_module(f"keras_cam.{name}")  # a submodule: keras_cam.dataset, ...
    else:
        raise AttributeError(f"module 'keras_cam' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
