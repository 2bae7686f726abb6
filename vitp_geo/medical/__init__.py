"""The medical adapter: NIfTI/DICOM volumes, intensity presets, slices and volumes, medical builders.

No geospatial imports here. Import the submodules directly."""
