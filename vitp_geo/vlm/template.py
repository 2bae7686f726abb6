"""The ``internvl2_5`` chat template and conversation tokenisation with assistant-only labels.

Format (InternVL2.5, as used by ViTP)::

    <|im_start|>system\\n{system}<|im_end|>\\n
    <|im_start|>user\\n{question with <img><IMG_CONTEXT>×n</img>}<|im_end|>\\n
    <|im_start|>assistant\\n{answer}<|im_end|>\\n

Each segment is tokenised on its own and concatenated, as InternVL's ``preprocess_internvl2_5``
does. Loss is on the assistant's answer and its ``<|im_end|>`` only: the system and user turns,
the ``<|im_start|>assistant\\n`` prefix, the trailing newline and every image token get -100.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from vitp_geo.constants import IGNORE_INDEX
from vitp_geo.vlm.tokenizer import IMG_CONTEXT_TOKEN, IMG_END_TOKEN, IMG_START_TOKEN

__all__ = [
    "IGNORE_INDEX",
    "IMAGE_PLACEHOLDER",
    "INTERNVL2_5_SYSTEM_MESSAGE",
    "format_conversation",
    "tokenize_conversation",
]

IMAGE_PLACEHOLDER = "<image>"
# InternVL2.5's default system message (conversation template "internvl2_5").
INTERNVL2_5_SYSTEM_MESSAGE = "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


def _image_block(n: int) -> str:
    return f"{IMG_START_TOKEN}{IMG_CONTEXT_TOKEN * n}{IMG_END_TOKEN}"


def format_conversation(
    conversations: list[dict[str, Any]], num_image_tokens: list[int], system_message: str | None = None
) -> list[tuple[str, str]]:
    """Render a LLaVA/InternVL conversation into template segments.

    Args:
        conversations: ``[{"from": "human"|"gpt"|"system", "value": str}, ...]``.
        num_image_tokens: image-context tokens for each image, in order (tiles × tokens per tile).
        system_message: overrides the default system message (a leading ``system`` turn wins).

    Returns:
        ``[(role, text), ...]`` with role in {system, user, assistant}; text is the full segment.
    """
    turns = list(conversations)
    if not turns:
        raise ValueError("conversation is empty")
    system = INTERNVL2_5_SYSTEM_MESSAGE if system_message is None else system_message
    if turns[0].get("from") == "system":
        system = str(turns[0]["value"])
        turns = turns[1:]
    n_placeholders = sum(str(t.get("value", "")).count(IMAGE_PLACEHOLDER) for t in turns)
    if num_image_tokens and n_placeholders == 0:
        # Like InternVL: images without placeholders go in front of the first human turn.
        first = next((i for i, t in enumerate(turns) if _ROLES.get(str(t.get("from"))) == "user"), None)
        if first is None:
            raise ValueError("conversation has images but no human turn to attach them to")
        turns[first] = dict(
            turns[first], value=f"{IMAGE_PLACEHOLDER}\n" * len(num_image_tokens) + str(turns[first]["value"])
        )
        n_placeholders = len(num_image_tokens)
    if n_placeholders != len(num_image_tokens):
        raise ValueError(
            f"conversation has {n_placeholders} {IMAGE_PLACEHOLDER} placeholders but {len(num_image_tokens)} images"
        )

    segments: list[tuple[str, str]] = []
    if system:
        segments.append(("system", f"<|im_start|>system\n{system}<|im_end|>\n"))
    image_idx = 0
    for turn in turns:
        role = _ROLES.get(str(turn.get("from")))
        if role is None:
            raise ValueError(f"unknown conversation role {turn.get('from')!r} (expected human/gpt)")
        value = str(turn.get("value", ""))
        if role == "assistant" and IMAGE_PLACEHOLDER in value:
            raise ValueError("an assistant turn contains an <image> placeholder")
        while IMAGE_PLACEHOLDER in value:
            value = value.replace(IMAGE_PLACEHOLDER, _image_block(num_image_tokens[image_idx]), 1)
            image_idx += 1
        segments.append((role, f"<|im_start|>{role}\n{value}<|im_end|>\n"))
    return segments


def tokenize_conversation(
    conversations: list[dict[str, Any]],
    tokenizer: PreTrainedTokenizerBase,
    num_image_tokens: list[int],
    max_length: int,
    system_message: str | None = None,
) -> tuple[Tensor, Tensor]:
    """Tokenise one conversation with the ``internvl2_5`` template; loss on assistant turns only.

    Args:
        conversations: LLaVA/InternVL turns (``from``: human/gpt/system, ``value``).
        tokenizer: a tokenizer with InternVL's special tokens.
        num_image_tokens: image-context tokens per image, in placeholder order.
        max_length: truncate to this many tokens; never through an image's tokens.
        system_message: overrides InternVL2.5's default system message.

    Returns:
        ``(input_ids (L,), labels (L,))`` int64, labels -100 outside assistant answers.

    Raises:
        ValueError: placeholder/image count mismatch, or ``max_length`` would cut an image block
            (the message names both lengths).
    """
    if max_length <= 0:
        raise ValueError(f"max_length must be positive, got {max_length}")
    ids: list[int] = []
    labels: list[int] = []

    def encode(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    for role, text in format_conversation(conversations, num_image_tokens, system_message):
        if role != "assistant":
            seg = encode(text)
            ids += seg
            labels += [IGNORE_INDEX] * len(seg)
            continue
        prefix = encode("<|im_start|>assistant\n")
        body = encode(text[len("<|im_start|>assistant\n") : -1])  # answer + <|im_end|>
        newline = encode("\n")
        ids += prefix + body + newline
        labels += [IGNORE_INDEX] * len(prefix) + body + [IGNORE_INDEX] * len(newline)

    if len(ids) > max_length:
        end_id = int(tokenizer.convert_tokens_to_ids(IMG_END_TOKEN))  # type: ignore[arg-type]
        ctx_id = int(tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN))  # type: ignore[arg-type]
        # Truncation may only drop text: every image block must survive whole, or the image
        # features would no longer match the context tokens.
        if ids[:max_length].count(ctx_id) != ids.count(ctx_id) or (
            ids.count(end_id) != ids[:max_length].count(end_id)
        ):
            last_end = max((i for i, t in enumerate(ids) if t == end_id), default=-1)
            raise ValueError(
                f"max_length {max_length} would cut through an image's context tokens: the conversation "
                f"has {len(ids)} tokens and its image tokens end at {last_end + 1}; raise max_length "
                "or use fewer tiles"
            )
        ids, labels = ids[:max_length], labels[:max_length]
    return torch.tensor(ids, dtype=torch.long), torch.tensor(labels, dtype=torch.long)
