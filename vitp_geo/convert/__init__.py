"""Released fine-tuned reference checkpoints (mmrotate / mmseg / open-cd layouts) → our ``model.ckpt``.

``keymap`` holds the one table of key renames and tensor reshapes; ``release`` builds the model a
benchmark config describes in the reference's layout, fills it and writes the checkpoint with its
model card (``vitp-geo convert``).
"""

from vitp_geo.convert.release import convert_release, convert_state_dict, read_release_checkpoint

__all__ = ["convert_release", "convert_state_dict", "read_release_checkpoint"]
