"""One error line for a ``torch.load`` that failed, whatever the reason.

Checkpoints are read with ``weights_only=True``: a file whose pickle asks for anything beyond
tensors and plain containers (``os.system``, a class of some package) is refused by torch. Torch's
message then spreads over several lines and advises re-running with ``weights_only=False``,
which would run the file's code; we say what was refused instead, on one line.
"""

from __future__ import annotations

import pickle
import re

_DETAIL = re.compile(r"WeightsUnpickler error:\s*(.+?)(?:\n\s*\n|Check the documentation|$)", re.S)


def load_error(err: BaseException, what: str = "a readable PyTorch checkpoint") -> str:
    """The reason ``torch.load`` failed, as one line without torch's advice to turn the check off.

    Args:
        err: what ``torch.load`` raised.
        what: what the file should have been, for other errors (``not <what> (...)``).
    """
    text = " ".join(str(err).split())
    if isinstance(err, pickle.UnpicklingError):
        m = _DETAIL.search(str(err))
        # the first sentence: what was asked for, not torch's advice on how to allow it
        detail = re.split(r"\.\s| Please ", " ".join(m.group(1).split()))[0] if m else text
        if detail.startswith("Unsupported global"):
            return (
                f"refused: it holds more than tensors and plain containers ({detail}), and checkpoints "
                "are never loaded in a way that could run code from them"
            )
        text = detail  # a damaged file or another pickle protocol
    return f"not {what} ({type(err).__name__}: {text})"
