"""Open a detection GeoPackage in QGIS and report CRS, extent, features and style as JSON on stdout.

Run with Debian's Python (``/usr/bin/python3``, which has ``python3-qgis``), not the venv::

    QT_QPA_PLATFORM=offscreen /usr/bin/python3 qgis_detection_client.py DETECTIONS.gpkg LAYER

The layer is deleted before ``exitQgis()`` (QGIS segfaults otherwise).
"""

import json
import sys

from qgis.core import QgsApplication, QgsVectorLayer

messages = []


def main(gpkg_path, layer_name):
    app = QgsApplication([], False)
    app.initQgis()
    QgsApplication.messageLog().messageReceived.connect(
        lambda msg, tag, level: messages.append({"tag": tag, "level": int(level), "message": msg})
    )
    report = {}
    layer = QgsVectorLayer(f"{gpkg_path}|layername={layer_name}", "detections", "ogr")
    try:
        ext = layer.extent()
        renderer = layer.renderer()
        report = {
            "valid": layer.isValid(),
            "crs": layer.crs().authid(),
            "extent": [ext.xMinimum(), ext.yMinimum(), ext.xMaximum(), ext.yMaximum()],
            "feature_count": layer.featureCount(),
            "geometry_type": layer.geometryType(),
            "renderer": renderer.type() if renderer else None,
            "attribute": renderer.classAttribute()
            if renderer and renderer.type() == "categorizedSymbol"
            else None,
            "categories": [
                {"value": str(c.value()), "label": c.label(), "color": c.symbol().color().name()}
                for c in (
                    renderer.categories() if renderer and renderer.type() == "categorizedSymbol" else []
                )
            ],
            "fields": [f.name() for f in layer.fields()],
            "vertices": [len(f.geometry().asPolygon()[0]) for f in layer.getFeatures()],
        }
    finally:
        del layer
        report["messages"] = messages
        print(json.dumps(report))
        sys.stdout.flush()
        app.exitQgis()


if __name__ == "__main__":
    main(*sys.argv[1:3])
