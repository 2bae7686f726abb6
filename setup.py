"""The packages of the vitp-geo distribution; every other setting is in pyproject.toml.

The repository keeps its LightningDataModules in the top-level ``datamodules/`` folder (our
layout asks for it) but installs them as ``vitp_geo.datamodules``: ``datamodules`` alone is a name
any other project may install too. pyproject.toml's package discovery cannot map a folder onto a
sub-package, hence this file: ``package_dir`` maps ``vitp_geo.datamodules`` to ``datamodules/``
(an editable install maps it the same way), and ``qgis_plugin/vitp_geo_qgis`` ships as the
top-level ``vitp_geo_qgis`` so that ``vitp-geo qgis-plugin build|install`` finds the plugin's
files in a non-editable install.
"""

from setuptools import find_packages, setup

setup(
    packages=[
        *find_packages(include=["vitp_geo", "vitp_geo.*"]),
        "vitp_geo.datamodules",
        *find_packages("qgis_plugin", include=["vitp_geo_qgis", "vitp_geo_qgis.*"]),
    ],
    package_dir={"vitp_geo.datamodules": "datamodules", "vitp_geo_qgis": "qgis_plugin/vitp_geo_qgis"},
)
