"""The ``vitp`` Processing provider."""

import os

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from . import settings
from .algorithms import DetectChanges, DetectObjects, SegmentScene


class VitpProvider(QgsProcessingProvider):
    def load(self):
        settings.register()
        self.refreshAlgorithms()
        return True

    def unload(self):
        settings.unregister()

    def loadAlgorithms(self):
        for alg in (SegmentScene(), DetectObjects(), DetectChanges()):
            self.addAlgorithm(alg)

    def id(self):
        return "vitp"

    def name(self):
        return "vitp-geo"

    def longName(self):
        return "vitp-geo: ViTP remote-sensing models"

    def icon(self):
        return QIcon(os.path.join(os.path.dirname(__file__), "icon.svg"))

    def svgIconPath(self):
        return os.path.join(os.path.dirname(__file__), "icon.svg")
