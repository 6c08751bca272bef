"""keras-cam: class-activation maps for Keras models.

Shows where a CNN looked when it made a prediction (Grad-CAM, Grad-CAM++ and
their family), for Keras 3 on TensorFlow and for legacy tf-keras.
"""

from keras_cam.base import Explainer, Explanation
from keras_cam.layers import list_layers
from keras_cam.methods.gradient import GradCAM, GradCAMPlusPlus
from keras_cam.methods.score import ScoreCAM
from keras_cam.viz import overlay, plot

__version__ = "0.1.0"

__all__ = [
    "Explainer",
    "Explanation",
    "GradCAM",
    "GradCAMPlusPlus",
    "ScoreCAM",
    "list_layers",
    "overlay",
    "plot",
]
