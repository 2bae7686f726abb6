"""Open a VRT mosaic in QGIS and report what QGIS sees, as JSON on stdout.

Run with Debian's Python (``/usr/bin/python3``, which has ``python3-qgis``), not the venv::

    QT_QPA_PLATFORM=offscreen /usr/bin/python3 qgis_mosaic_client.py MOSAIC.vrt X,Y [X,Y ...]

Reports the layer's validity, CRS, size, renderer, palette and the class value QGIS identifies at
each map point. The layer is deleted before ``exitQgis()`` (QGIS segfaults otherwise).
"""

import json
import sys

from qgis.core import QgsApplication, QgsPointXY, QgsRaster, QgsRasterLayer

messages = []


def main(vrt_path, points):
    app = QgsApplication([], False)
    app.initQgis()
    QgsApplication.messageLog().messageReceived.connect(
        lambda msg, tag, level: messages.append({"tag": tag, "level": int(level), "message": msg})
    )
    layer = QgsRasterLayer(vrt_path, "mosaic", "gdal")
    report = {}
    try:
        renderer = layer.renderer()
        provider = layer.dataProvider()
        values = []
        for text in points:
            x, y = (float(v) for v in text.split(","))
            res = provider.identify(QgsPointXY(x, y), QgsRaster.IdentifyFormatValue).results()
            values.append(None if res.get(1) is None else int(res[1]))
        report = {
            "valid": layer.isValid(),
            "crs": layer.crs().authid(),
            "width": layer.width(),
            "height": layer.height(),
            "renderer": renderer.type() if renderer else None,
            "palette": [
                {"value": c.value, "color": c.color.name(), "label": c.label}
                for c in (renderer.classes() if renderer and renderer.type() == "paletted" else [])
            ],
            "nodata": provider.sourceNoDataValue(1) if provider.sourceHasNoDataValue(1) else None,
            "values": values,
        }
    finally:
        del layer
        report["messages"] = messages
        print(json.dumps(report))
        sys.stdout.flush()
        app.exitQgis()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
