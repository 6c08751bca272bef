"""Concepts: what the model looked at, not only where.

- :class:`DeepFeatureFactorization` (Collins et al. 2018): ``k`` concepts of a
  layer over a set of images, by non-negative matrix factorization of its
  activations; per-image concept maps and each concept's class scores.
- :class:`CRAFT` (Fel et al. 2023): concepts of one class from crops of its
  images, their importance by total Sobol indices, and concept attribution
  maps on new images.
- :func:`nmf`: the batched multiplicative-update NMF both use (``keras.ops``,
  every backend); :func:`sobol_total_indices`: the Jansen estimator CRAFT uses.
"""

from keras_cam.concepts.craft import CRAFT, CraftConcepts, sobol_design, sobol_total_indices
from keras_cam.concepts.dff import Concepts, DeepFeatureFactorization, factorize
from keras_cam.concepts.figures import concept_overlay, plot_concepts
from keras_cam.concepts.nmf import Factorization, nmf

__all__ = ["CRAFT", "Concepts", "CraftConcepts", "DeepFeatureFactorization", "Factorization", "concept_overlay",
           "factorize", "nmf", "plot_concepts", "sobol_design", "sobol_total_indices"]
