"""vitp-geo for QGIS: a Processing provider (id ``vitp``) that runs the ``vitp-geo`` command.

QGIS runs this package in its own Python. It imports only QGIS and the standard library: the
models run in the environment ``vitp-geo`` is installed in, as a subprocess (``runner``). Nothing
QGIS-specific is imported at module level, so ``runner`` can also be used (and tested) outside
QGIS.
"""


def classFactory(iface):
    from .plugin import VitpGeoPlugin

    return VitpGeoPlugin(iface)
