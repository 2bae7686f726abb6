"""Tokenizers: an offline byte-level BPE for tiny runs and tests, and local real tokenizers.

``build_offline_tokenizer`` trains a small byte-level BPE with the ``tokenizers`` library on a
built-in text sample (plus any texts you pass), deterministically and without network access,
and adds InternVL's special tokens. Real runs load the Qwen2 tokenizer of an InternVL2.5
directory with :func:`load_tokenizer`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

__all__ = [
    "IMG_CONTEXT_TOKEN",
    "IMG_END_TOKEN",
    "IMG_START_TOKEN",
    "PAD_TOKEN",
    "SPECIAL_TOKENS",
    "build_offline_tokenizer",
    "load_tokenizer",
]

IMG_START_TOKEN = "<img>"
IMG_END_TOKEN = "</img>"
IMG_CONTEXT_TOKEN = "<IMG_CONTEXT>"
PAD_TOKEN = "<|endoftext|>"  # Qwen2's pad token
SPECIAL_TOKENS = [
    PAD_TOKEN,
    "<|im_start|>",
    "<|im_end|>",
    IMG_START_TOKEN,
    IMG_END_TOKEN,
    IMG_CONTEXT_TOKEN,
    "<ref>",
    "</ref>",
    "<box>",
    "</box>",
    "<quad>",
    "</quad>",
]

# Built-in sample: the vocabulary of the instruction corpus (remote sensing, counting, grounding).
_BUILTIN_TEXT = """
You are an AI assistant for remote sensing imagery. Please describe the image in detail.
This is an aerial image of a residential area with buildings, roads, water and fields.
How many buildings are there in the image? There are 3 buildings. There is 1 building.
Is there a road in the image? Yes. No. Answer the question using a single word or phrase.
What is the scene class of this image? The scene is farmland, forest, industrial, river, urban.
Please provide the bounding box coordinate of the region this sentence describes: the building.
Detect all objects in the image and output their bounding boxes. Classify the image.
Which land cover type covers the largest area? water, field, road, building, background.
A satellite view of a harbor with ships, a bridge, an airport runway and storage tanks.
The CT slice shows the liver, kidney, spleen and a lesion. The MRI scan of the brain.
0 1 2 3 4 5 6 7 8 9 10 100 250 500 750 1000 [[12, 34, 567, 890]] , . ? ! : ; ( ) [ ] - _ / '
The quick brown fox jumps over the lazy dog. A photo of a cat sitting on a mat next to a car.
"""


def build_offline_tokenizer(
    texts: Iterable[str] | None = None, vocab_size: int = 2048
) -> PreTrainedTokenizerFast:
    """Train a deterministic byte-level BPE tokenizer offline, with InternVL's special tokens.

    Args:
        texts: extra training text (e.g. the instruction corpus); the built-in sample is always
            included, so the same inputs give the same vocabulary.
        vocab_size: target vocabulary size including the 256 byte tokens and special tokens.

    Returns:
        A ``PreTrainedTokenizerFast`` with ``pad_token`` ``<|endoftext|>``, ``eos_token``
        ``<|im_end|>`` and the special tokens ``<img>``, ``</img>``, ``<IMG_CONTEXT>``, ``<ref>``,
        ``</ref>``, ``<box>``, ``</box>``, ``<quad>``, ``</quad>``, ``<|im_start|>``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be at least {256 + len(SPECIAL_TOKENS)}, got {vocab_size}")
    corpus = [_BUILTIN_TEXT] + [t for t in (texts or []) if t]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD_TOKEN,
        eos_token="<|im_end|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
        model_max_length=1 << 20,
    )
    return fast


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """Load a tokenizer from a local directory (never the network, never remote code).

    Raises:
        FileNotFoundError: the directory or its tokenizer files are missing (named).
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer directory not found: {path}")
    names = {"tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model"}
    if not any((path / n).is_file() for n in names):
        raise FileNotFoundError(f"no tokenizer files in {path} (expected one of {sorted(names)})")
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    missing = [
        t
        for t in (IMG_START_TOKEN, IMG_END_TOKEN, IMG_CONTEXT_TOKEN)
        if tok.convert_tokens_to_ids(t) in (None, tok.unk_token_id)
    ]
    if missing:
        raise ValueError(f"tokenizer in {path} lacks InternVL special tokens {missing}")
    if tok.pad_token is None:
        tok.pad_token = PAD_TOKEN if PAD_TOKEN in tok.get_vocab() else tok.eos_token
    return tok
