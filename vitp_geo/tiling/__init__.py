"""Tiled inference over large scenes: window planning, blending, streaming merge, detection merge.

The engine is model-agnostic: ``engine.segment_scene`` and ``window_detections.detect_scene`` run any callable
that maps a window batch to class scores or boxes. See docs/inference.md.
"""
