"""LightningDataModules for vitp-geo (torchgeo-based and our own)."""
