"""QGIS styles: ``.qml`` files beside outputs and the ``layer_styles`` table in GeoPackages.

QGIS loads ``<name>.qml`` beside a raster or vector file as its default style, and for a
GeoPackage layer the row of the ``layer_styles`` table (QGIS's own schema) with
``useAsDefault`` set. We write both, so class maps open as a paletted raster and polygon layers
as a categorised renderer, each with the model's class names and colours.

GeoPackages are written as version 1.2 so that GDAL 3.6 / QGIS 3.22 open them without warnings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import quoteattr

import geopandas as gpd
import pandas as pd
import pyogrio

from vitp_geo.io.atomic import atomic_output, output_set
from vitp_geo.io.vector import GPKG_OPTIONS  # GeoPackage 1.2 for GDAL 3.6 / QGIS 3.22

QGIS_VERSION = "3.22.16-Białowieża"


@dataclass(frozen=True)
class ClassStyle:
    """Class names and RGB colours (index = class id)."""

    names: Sequence[str]
    colors: Sequence[tuple[int, int, int]]

    def __post_init__(self) -> None:
        if len(self.names) != len(self.colors):
            raise ValueError(f"{len(self.names)} class names but {len(self.colors)} colours")
        for c in self.colors:
            if len(c) != 3 or not all(0 <= int(v) <= 255 for v in c):
                raise ValueError(f"colours must be RGB triples in 0..255, got {c}")


def _hex(c: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(v) for v in c))


def paletted_qml(classes: ClassStyle) -> str:
    """QML for a single-band class raster: paletted renderer with names and colours."""
    entries = "\n".join(
        f'        <paletteEntry value="{i}" color="{_hex(c)}" label={quoteattr(n)} alpha="255"/>'
        for i, (n, c) in enumerate(zip(classes.names, classes.colors, strict=True))
    )
    return f"""<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="{QGIS_VERSION}" styleCategories="AllStyleCategories">
  <pipe>
    <provider>
      <resampling enabled="false" zoomedInResamplingMethod="nearestNeighbour" zoomedOutResamplingMethod="nearestNeighbour" maxOversampling="2"/>
    </provider>
    <rasterrenderer type="paletted" band="1" opacity="1" alphaBand="-1" nodataColor="">
      <rasterTransparency/>
      <minMaxOrigin>
        <limits>None</limits>
        <extent>WholeRaster</extent>
        <statAccuracy>Estimated</statAccuracy>
        <cumulativeCutLower>0.02</cumulativeCutLower>
        <cumulativeCutUpper>0.98</cumulativeCutUpper>
        <stdDevFactor>2</stdDevFactor>
      </minMaxOrigin>
      <colorPalette>
{entries}
      </colorPalette>
      <colorramp type="randomcolors" name="[source]"/>
    </rasterrenderer>
    <brightnesscontrast brightness="0" contrast="0" gamma="1"/>
    <huesaturation saturation="0" grayscaleMode="0" colorizeOn="0" colorizeStrength="100" colorizeRed="255" colorizeGreen="128" colorizeBlue="128" invertColors="0"/>
    <rasterresampler maxOversampling="2"/>
    <resamplingStage>resamplingFilter</resamplingStage>
  </pipe>
  <blendMode>0</blendMode>
</qgis>
"""


def gray_qml(minimum: float = 0.0, maximum: float = 1.0) -> str:
    """QML for a score raster: band 1 in grey from ``minimum`` to ``maximum``."""
    return f"""<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="{QGIS_VERSION}" styleCategories="AllStyleCategories">
  <pipe>
    <rasterrenderer type="singlebandgray" grayBand="1" gradient="BlackToWhite" opacity="1" alphaBand="-1" nodataColor="">
      <rasterTransparency/>
      <minMaxOrigin>
        <limits>None</limits>
        <extent>WholeRaster</extent>
        <statAccuracy>Estimated</statAccuracy>
        <cumulativeCutLower>0.02</cumulativeCutLower>
        <cumulativeCutUpper>0.98</cumulativeCutUpper>
        <stdDevFactor>2</stdDevFactor>
      </minMaxOrigin>
      <contrastEnhancement>
        <minValue>{minimum}</minValue>
        <maxValue>{maximum}</maxValue>
        <algorithm>StretchToMinimumMaximum</algorithm>
      </contrastEnhancement>
    </rasterrenderer>
    <brightnesscontrast brightness="0" contrast="0" gamma="1"/>
    <huesaturation saturation="0" grayscaleMode="0" colorizeOn="0" colorizeStrength="100" colorizeRed="255" colorizeGreen="128" colorizeBlue="128" invertColors="0"/>
    <rasterresampler maxOversampling="2"/>
  </pipe>
  <blendMode>0</blendMode>
</qgis>
"""


def categorized_qml(classes: ClassStyle, attribute: str = "class_id") -> str:
    """QML for a polygon layer: categorised renderer on ``attribute`` with our colours."""
    cats, symbols = [], []
    for i, (n, c) in enumerate(zip(classes.names, classes.colors, strict=True)):
        cats.append(f'      <category value="{i}" label={quoteattr(n)} symbol="{i}" render="true"/>')
        rgba = ",".join(str(int(v)) for v in c) + ",255"
        symbols.append(f"""      <symbol type="fill" name="{i}" alpha="1" clip_to_extent="1" force_rhr="0">
        <data_defined_properties><Option type="Map"><Option type="QString" name="name" value=""/><Option name="properties"/><Option type="QString" name="type" value="collection"/></Option></data_defined_properties>
        <layer class="SimpleFill" enabled="1" pass="0" locked="0">
          <Option type="Map">
            <Option type="QString" name="border_width_map_unit_scale" value="3x:0,0,0,0,0,0"/>
            <Option type="QString" name="color" value="{rgba}"/>
            <Option type="QString" name="joinstyle" value="bevel"/>
            <Option type="QString" name="offset" value="0,0"/>
            <Option type="QString" name="offset_map_unit_scale" value="3x:0,0,0,0,0,0"/>
            <Option type="QString" name="offset_unit" value="MM"/>
            <Option type="QString" name="outline_color" value="35,35,35,255"/>
            <Option type="QString" name="outline_style" value="solid"/>
            <Option type="QString" name="outline_width" value="0.26"/>
            <Option type="QString" name="outline_width_unit" value="MM"/>
            <Option type="QString" name="style" value="solid"/>
          </Option>
        </layer>
      </symbol>""")
    return f"""<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="{QGIS_VERSION}" styleCategories="AllStyleCategories">
  <renderer-v2 type="categorizedSymbol" attr={quoteattr(attribute)} symbollevels="0" enableorderby="0" forceraster="0" referencescale="-1">
    <categories>
{chr(10).join(cats)}
    </categories>
    <symbols>
{chr(10).join(symbols)}
    </symbols>
  </renderer-v2>
  <blendMode>0</blendMode>
  <featureBlendMode>0</featureBlendMode>
  <layerGeometryType>2</layerGeometryType>
</qgis>
"""


def qml_path(path: str | Path) -> Path:
    return Path(path).with_suffix(".qml")


def write_raster_qml(raster: str | Path, classes: ClassStyle | None) -> Path:
    """Write ``<raster>.qml``: paletted for a class map, grey 0–1 for scores (``classes=None``)."""
    text = paletted_qml(classes) if classes is not None else gray_qml()
    out = qml_path(raster)
    with atomic_output(out) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return out


def write_styled_gpkg(
    path: str | Path,
    frame: gpd.GeoDataFrame,
    classes: ClassStyle,
    layer: str | None = None,
    qml: str | Path | None = None,
) -> Path:
    """Write ``frame`` as one polygon layer with its style in ``layer_styles`` and a ``.qml``.

    Args:
        path: the ``.gpkg`` (replaced if it exists).
        frame: polygons with a ``class_id`` column (may be empty).
        classes: names and colours for the categorised renderer.
        layer: layer name (default: the file stem).
        qml: where the ``.qml`` copy goes (default ``<stem>.qml``; pick another name when a raster
            output shares the stem, since QGIS auto-loads ``<stem>.qml`` for the raster).
    """
    path = Path(path)
    layer = layer or path.stem
    qml_text = categorized_qml(classes)
    geom_col = "geom"  # the GeoPackage geometry column QGIS matches styles on
    styles = pd.DataFrame(
        {
            "f_table_catalog": [""],
            "f_table_schema": [""],
            "f_table_name": [layer],
            "f_geometry_column": [geom_col],
            "styleName": [layer],
            "styleQML": [qml_text],
            "styleSLD": [""],
            "useAsDefault": [True],
            "description": ["vitp-geo class style"],
            "owner": [""],
            "ui": [""],
            "update_time": [pd.Timestamp.now(tz="UTC").tz_localize(None).floor("s")],
        }
    )
    with output_set():  # the style and the layer appear together or not at all
        with atomic_output(Path(qml) if qml is not None else qml_path(path)) as tmp:
            tmp.write_text(qml_text, encoding="utf-8")
        with atomic_output(path) as tmp:
            pyogrio.write_dataframe(
                frame,
                tmp,
                layer=layer,
                driver="GPKG",
                # one layer type: MultiPolygon when any feature is one (Mask R-CNN masks), else Polygon
                geometry_type="MultiPolygon"
                if bool((frame.geom_type == "MultiPolygon").any())
                else "Polygon",
                dataset_options=GPKG_OPTIONS,
                layer_options={"SPATIAL_INDEX": "YES", "GEOMETRY_NAME": geom_col},
            )
            pyogrio.write_dataframe(
                styles, tmp, layer="layer_styles", driver="GPKG", append=True, layer_options={"FID": "id"}
            )
    return path
