"""Dataset audit: cluster each class's maps (SpRAy), rank the clusters, report them in a page.

- :mod:`keras_cam.audit.core`: :func:`audit`, :class:`Audit`, :class:`Cluster`;
- :mod:`keras_cam.audit.spray`: the spectral clustering and the suspicion score;
- :mod:`keras_cam.audit.report`: the self-contained HTML report.

``keras_cam.audit`` is this package, and calling it runs :func:`audit`
(``keras_cam.audit(explainer, data, labels)``), whatever was imported first:
its modules stay reachable (``keras_cam.audit.spray``).
"""

import sys
import types

from keras_cam.audit import core, report, spray
from keras_cam.audit.core import Audit, Cluster, audit


class _CallableModule(types.ModuleType):
    """The package, callable as :func:`keras_cam.audit.core.audit`."""

    def __call__(self, *args, **kwargs):
        return audit(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["Audit", "Cluster", "audit"]
