"""Dataset audit: find each class's shared hotspot, verify it by intervention, report it in a page.

- :mod:`keras_cam.audit.core`: :func:`audit`, :class:`Audit`, :class:`Cluster`;
- :mod:`keras_cam.audit.hotspots`: the groups by shared hotspot, their score and level;
- :mod:`keras_cam.audit.verify`: removal and transplant interventions (:meth:`Audit.verify`);
- :mod:`keras_cam.audit.spray`: the spectral clustering (``n_clusters=int``) and its score;
- :mod:`keras_cam.audit.report`: the self-contained HTML report.

``keras_cam.audit`` is this package, and calling it runs :func:`audit`
(``keras_cam.audit(explainer, data, labels)``), whatever was imported first:
its modules stay reachable (``keras_cam.audit.spray``).
"""

import sys
import types

from keras_cam.audit import core, hotspots, report, spray, verify
from keras_cam.audit.core import Audit, Cluster, audit


class _CallableModule(types.ModuleType):
    """The package, callable as :func:`keras_cam.audit.core.audit`."""

    def __call__(self, *args, **kwargs):
        return audit(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["Audit", "Cluster", "audit"]
