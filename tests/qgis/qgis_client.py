"""Open vitp-geo outputs in QGIS and report what QGIS sees, as JSON on stdout.

Run with Debian's Python (``/usr/bin/python3``, which has ``python3-qgis``), not the venv::

    QT_QPA_PLATFORM=offscreen /usr/bin/python3 qgis_client.py CLASSMAP.tif VECTOR.gpkg LAYER

Layers are deleted before ``exitQgis()`` (QGIS segfaults otherwise).
"""

import json
import sys

from qgis.core import QgsApplication, QgsRasterLayer, QgsVectorLayer

messages = []


def main(raster_path, gpkg_path, layer_name):
    app = QgsApplication([], False)
    app.initQgis()
    QgsApplication.messageLog().messageReceived.connect(
        lambda msg, tag, level: messages.append({"tag": tag, "level": int(level), "message": msg})
    )
    report = {}
    raster = QgsRasterLayer(raster_path, "classes", "gdal")
    vector = QgsVectorLayer(f"{gpkg_path}|layername={layer_name}", "polygons", "ogr")
    try:
        renderer = raster.renderer()
        report["raster"] = {
            "valid": raster.isValid(),
            "crs": raster.crs().authid(),
            "width": raster.width(),
            "height": raster.height(),
            "renderer": renderer.type() if renderer else None,
            "palette": [
                {"value": c.value, "color": c.color.name(), "label": c.label}
                for c in (renderer.classes() if renderer and renderer.type() == "paletted" else [])
            ],
            "has_nodata": raster.dataProvider().sourceHasNoDataValue(1),
            "nodata": raster.dataProvider().sourceNoDataValue(1),
            "gdal_color_table": [
                {"value": int(e.value), "color": e.color.name()} for e in raster.dataProvider().colorTable(1)
            ][:8],
        }
        vrenderer = vector.renderer()
        report["vector"] = {
            "valid": vector.isValid(),
            "crs": vector.crs().authid(),
            "feature_count": vector.featureCount(),
            "renderer": vrenderer.type() if vrenderer else None,
            "attribute": vrenderer.classAttribute()
            if vrenderer and vrenderer.type() == "categorizedSymbol"
            else None,
            "categories": [
                {"value": str(c.value()), "label": c.label(), "color": c.symbol().color().name()}
                for c in (
                    vrenderer.categories() if vrenderer and vrenderer.type() == "categorizedSymbol" else []
                )
            ],
            "fields": [f.name() for f in vector.fields()],
        }
    finally:
        del raster, vector
        report["messages"] = messages
        print(json.dumps(report))
        sys.stdout.flush()
        app.exitQgis()


if __name__ == "__main__":
    main(*sys.argv[1:4])
