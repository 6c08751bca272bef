"""The built-in demo: generated shapes with known boxes, and a small trained CNN.

    from keras_cam.demo import make_dataset, load_model, CLASS_NAMES
    images, labels, boxes = make_dataset(16, seed=1)   # boxes: (y0, x0, y1, x1), end exclusive
    model = load_model()                               # works under Keras 3 and tf-keras
    shortcut = load_shortcut_model()                   # trained with a corner mark on every circle
    vit, clip = load_vit(), load_clip()                # a small ViT and a CLIP-style model (keras_cam.demo.vit)

``keras-cam demo`` (see :mod:`keras_cam.cli`) explains a few of these images
with six methods (``DEMO_METHODS``) and writes a figure and a summary; ``keras-cam demo --audit``
audits the shortcut model (:func:`keras_cam.audit`).
"""

from keras_cam.demo.data import CLASS_NAMES, IMAGE_SIZE, make_dataset
from keras_cam.demo.model import TARGET_LAYER, build_model, load_model, load_shortcut_model
from keras_cam.demo.vit import CLIP_PROMPTS, build_clip, build_vit, load_clip, load_vit, prompt_ids

__all__ = ["CLASS_NAMES", "CLIP_PROMPTS", "IMAGE_SIZE", "TARGET_LAYER", "build_clip", "build_model", "build_vit",
           "load_clip", "load_model", "load_shortcut_model", "load_vit", "make_dataset", "prompt_ids"]
