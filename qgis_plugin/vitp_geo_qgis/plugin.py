"""The plugin object QGIS loads: registers the ``vitp`` Processing provider (also in qgis_process)."""

from qgis.core import QgsApplication

from .provider import VitpProvider


class VitpGeoPlugin:
    def __init__(self, iface):
        self.iface = iface
        self.provider = None

    def initProcessing(self):  # qgis_process calls only this one
        if self.provider is None:
            self.provider = VitpProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self):
        self.initProcessing()

    def unload(self):
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
