"""LightningDataModules for vitp-geo (torchgeo-based and our own), installed as ``vitp_geo.datamodules``.

The folder stays at the top of the repository; setup.py's ``package_dir`` installs it under our
namespace (``datamodules`` alone is a name any other project may install). Configs name the
classes ``vitp_geo.datamodules.<module>.<Class>``; a config with the old ``datamodules.`` path is
refused naming the new one (``vitp_geo.tasks.run.refuse_old_datamodule_paths``).
"""
