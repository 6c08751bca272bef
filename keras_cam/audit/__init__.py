"""Dataset audit: cluster each class's maps (SpRAy), rank the clusters, report them in a page.

- :mod:`keras_cam.audit.core`: :func:`audit`, :class:`Audit`, :class:`Cluster`;
- :mod:`keras_cam.audit.spray`: the spectral clustering and the suspicion score;
- :mod:`keras_cam.audit.report`: the self-contained HTML report.
"""

from keras_cam.audit.core import Audit, Cluster, audit

__all__ = ["Audit", "Cluster", "audit"]
