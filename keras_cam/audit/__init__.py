"""Dataset audit: cluster each class's maps (SpRAy), rank the clusters, report them in a page.

- :mod:`keras_cam.audit.core`: :func:`audit`, :class:`Audit`, :class:`Cluster`;
- :mod:`keras_cam.audit.spray`: the spectral clustering and the suspicion score;
- :mod:`keras_cam.audit.report`: the self-contained HTML report.

``keras_cam.audit`` is the function; its modules stay reachable through it
(``keras_cam.audit.spray``, ``import keras_cam.audit.spray as spray``).
"""

from keras_cam.audit import core, report, spray
from keras_cam.audit.core import Audit, Cluster, audit

# `keras_cam.audit` names the function (it replaces the package's attribute in keras_cam):
# the modules hang on it too, so that dotted access and `import keras_cam.audit.x` keep working.
audit.core, audit.report, audit.spray = core, report, spray

__all__ = ["Audit", "Cluster", "audit"]
