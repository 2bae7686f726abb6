"""vitp-geo: Visual Instruction Pretraining (ViTP) for remote sensing and medical imaging."""

__version__ = "0.1.0"
