"""keras-cam: class-activation maps for Keras models.

Shows where a CNN looked when it made a prediction (Grad-CAM, Grad-CAM++ and
their family), for Keras 3 on TensorFlow and for legacy tf-keras.
"""

from keras_cam import metrics
from keras_cam.audit import Audit, Cluster, audit
from keras_cam.base import Explainer, Explanation
from keras_cam.callbacks import CAMCallback
from keras_cam.dataset import explain_dataset
from keras_cam.flatten import flatten_model
from keras_cam.layers import list_layers
from keras_cam.methods.activation import CAM, EigenCAM
from keras_cam.methods.gradient import GradCAM, GradCAMPlusPlus, LayerCAM
from keras_cam.methods.guided import GuidedBackprop, GuidedGradCAM, gradient_image
from keras_cam.methods.score import ScoreCAM
from keras_cam.sanity import SanityResult, sanity_check
from keras_cam.viz import overlay, plot
from keras_cam.vizgradcam import VizGradCAM

__version__ = "0.1.0"

__all__ = [
    "Audit",
    "CAM",
    "CAMCallback",
    "Cluster",
    "EigenCAM",
    "Explainer",
    "Explanation",
    "GradCAM",
    "GradCAMPlusPlus",
    "GuidedBackprop",
    "GuidedGradCAM",
    "LayerCAM",
    "SanityResult",
    "ScoreCAM",
    "VizGradCAM",
    "audit",
    "explain_dataset",
    "flatten_model",
    "gradient_image",
    "list_layers",
    "metrics",
    "overlay",
    "plot",
    "sanity_check",
]
