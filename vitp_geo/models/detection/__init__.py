"""Detectors on the backbone feature pyramid: horizontal boxes (torchvision parts) and oriented boxes
(box coder, rotated RoI align, rotated IoU/NMS as tensor ops). Import the submodules directly."""
