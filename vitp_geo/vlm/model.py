"""The ViTP vision-language model: timm ViT → pixel shuffle → MLP projector → causal LM, with VRL.

Mirrors InternVL's ``InternVLChatModel`` (attribute names ``vision_model``, ``mlp1``,
``language_model`` so checkpoints load by key) without its monkey patches: the LLM's own
``forward`` is called with explicit ``inputs_embeds``, ``attention_mask`` and ``position_ids``.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

import torch
from timm.models import checkpoint_seq
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn
from transformers import PreTrainedModel

from vitp_geo.vlm.projector import pixel_shuffle
from vitp_geo.vlm.vrl import IGNORE_INDEX, visual_robustness_drop

__all__ = [
    "LossReduction",
    "ViTPConfig",
    "ViTPModel",
    "ViTPOutput",
    "answer_loss",
    "labelled_token_ce",
    "pick_attn_implementation",
    "token_losses",
    "weighted_answer_loss",
]


@dataclass
class ViTPConfig:
    """Settings of the VLM wrapped around the vision tower being pretrained."""

    img_size: int = 448  # tile size; InternVL2.5 / ViTP train on 448 px tiles
    patch_size: int = 14  # InternViT patch size
    downsample_ratio: float = 0.5  # pixel shuffle 0.5: 1024 patches → 256 tokens per 448 px tile
    ps_version: str = "v2"  # InternVL2+ pixel-shuffle order ("v1" leaves the grid transposed)
    select_layer: int = -1  # which ViT hidden state feeds the projector; InternVL2.5 uses the last
    vrl_ratio: float = 0.75  # VRL drop ratio r: the paper's best setting (drop 75 % of image tokens)
    # Probability that VRL is applied to a sample (separate from r): 1.0, the paper text. The tiny
    # CLI default (PretrainConfig.vrl_prob) uses 0.25 instead; see docs/pretraining-evidence.md §6.
    vrl_prob: float = 1.0
    vrl_reference_mode: bool = False  # reproduce the reference trigger (fires with prob 1 - r)
    template: str = "internvl2_5"  # chat template the data path must use with this model
    # How answer tokens are weighted in the loss (InternVL2.5's three options; see LossReduction).
    loss_reduction: str = "token"

    @property
    def num_image_token(self) -> int:
        """Image tokens per tile: (img_size / patch)² · downsample²."""
        grid = self.img_size // self.patch_size
        return int(grid * grid * self.downsample_ratio**2)


class LossReduction(StrEnum):
    """How the next-token loss averages over answer tokens (InternVL2.5 §3: loss reweighting).

    - ``token``: mean over all answer tokens of the batch (InternVL's default): a 40-token box
      list weighs 40 times a one-word answer;
    - ``sample``: mean over each sample's answer tokens, then over samples: every answer weighs
      the same, however long;
    - ``square``: each token weighs ``1 / sqrt(n)`` for an answer of ``n`` tokens (InternVL2.5's
      "square averaging", between the two).
    """

    TOKEN = "token"
    SAMPLE = "sample"
    SQUARE = "square"


def token_losses(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Per-position next-token cross-entropy and a 0/1 mask of the labelled positions.

    Args:
        logits: (B, L, V) LM logits.
        labels: (B, L) targets, -100 where no loss (the LM's own shift convention).

    Returns:
        ``(ce, valid)``, both (B, L-1) float32; ``ce`` is 0 where ``valid`` is 0.
    """
    shift_logits = logits[:, :-1].float()  # (B, L-1, V)
    shift_labels = labels[:, 1:]  # (B, L-1)
    ce = nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view_as(shift_labels)
    return ce, (shift_labels != IGNORE_INDEX).to(ce.dtype)


def labelled_token_ce(head: nn.Module, hidden: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Cross-entropy of the labelled positions only, the LM head run on those positions alone.

    Args:
        head: the LM's output embedding (hidden state → vocabulary logits).
        hidden: (B, T, H) the hidden state that predicts each target.
        targets: (B, T) token ids, -100 where no loss.

    Returns:
        ``(ce, rows)``, both (N,) for the N labelled positions: float32 cross-entropy and the row
        each position belongs to.
    """
    valid = targets != IGNORE_INDEX
    rows = valid.nonzero(as_tuple=True)[0]
    logits = head(hidden[valid]).float()  # (N, V)
    return nn.functional.cross_entropy(logits, targets[valid], reduction="none"), rows


def weighted_answer_loss(
    ce: Tensor, rows: Tensor, batch_size: int, reduction: LossReduction | str = "token"
) -> Tensor:
    """The :func:`answer_loss` of answer tokens given as a flat list.

    Args:
        ce: (N,) next-token cross-entropy of the N labelled positions of a batch.
        rows: (N,) the sample (row) each position belongs to.
        batch_size: B, the number of rows.
        reduction: ``token``, ``sample`` or ``square``.

    Returns:
        The scalar loss (NaN when N is 0).
    """
    mode = LossReduction(reduction)
    if mode is LossReduction.TOKEN:
        return ce.sum() / ce.new_tensor(float(ce.numel()))
    n = torch.bincount(rows, minlength=batch_size).to(ce.dtype)  # (B,) answer tokens per sample
    power = 1.0 if mode is LossReduction.SAMPLE else 0.5
    weights = n[rows].clamp(min=1.0).pow(-power)  # (N,)
    return (ce * weights).sum() / weights.sum()


def answer_loss(logits: Tensor, labels: Tensor, reduction: LossReduction | str = "token") -> Tensor:
    """Next-token cross-entropy on labelled positions, weighted per :class:`LossReduction`.

    Args:
        logits: (B, L, V).
        labels: (B, L) with -100 where no loss.
        reduction: ``token``, ``sample`` or ``square``.

    Returns:
        The scalar loss (NaN when no token has a label, as the LM's own loss).
    """
    ce, valid = token_losses(logits, labels)  # (B, L-1) each
    mask = valid.bool()
    return weighted_answer_loss(ce[mask], mask.nonzero(as_tuple=True)[0], int(labels.shape[0]), reduction)


class ViTPOutput(NamedTuple):
    """Forward result: mean next-token loss on labelled positions, logits (B, L', V), VRL counts.

    ``logits`` is None when the forward was asked for the loss only (``return_logits=False``).
    """

    loss: Tensor | None
    logits: Tensor | None
    kept_image_tokens: int
    total_image_tokens: int


def pick_attn_implementation(device: torch.device | str | None = None) -> str:
    """``flash_attention_2`` when flash-attn is installed and the device is CUDA, else ``sdpa``."""
    dev = torch.device(device) if device is not None else None
    on_cuda = dev.type == "cuda" if dev is not None else torch.cuda.is_available()
    if on_cuda and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


class ViTPModel(nn.Module):
    """Vision tower + projector + causal LM; trains all three end to end (ViTP).

    Args:
        config: :class:`ViTPConfig`.
        vision_model: an InternViT-layout timm ``VisionTransformer`` (class token first).
        mlp1: projector from ``vit_hidden / downsample²`` to the LM hidden size.
        language_model: a transformers causal LM (e.g. ``Qwen2ForCausalLM``).
        img_context_token_id: id of ``<IMG_CONTEXT>`` in the tokenizer.
    """

    def __init__(
        self,
        config: ViTPConfig,
        vision_model: VisionTransformer,
        mlp1: nn.Sequential,
        language_model: PreTrainedModel,
        img_context_token_id: int,
    ) -> None:
        super().__init__()
        if config.img_size % config.patch_size:
            raise ValueError(
                f"img_size {config.img_size} is not a multiple of patch_size {config.patch_size}"
            )
        self.config = config
        self.vision_model = vision_model
        self.mlp1 = mlp1
        self.language_model = language_model
        self.img_context_token_id = int(img_context_token_id)
        self.num_image_token = config.num_image_token
        self.downsample_ratio = config.downsample_ratio
        self.ps_version = config.ps_version
        self.select_layer = config.select_layer
        self.vrl_ratio = config.vrl_ratio
        self.vrl_prob = config.vrl_prob
        self.vrl_reference_mode = config.vrl_reference_mode
        self.vrl_generator: torch.Generator | None = None  # CPU generator for reproducible drops
        self.loss_reduction = LossReduction(config.loss_reduction)

    # ------------------------------------------------------------------------------------------
    def _vit_hidden(self, pixel_values: Tensor) -> Tensor:
        """The selected ViT hidden state (T, 1 + h*w, C); InternVL's ``hidden_states[select_layer]``.

        One path for every ``select_layer``: the blocks up to the selected one run under gradient
        checkpointing when it is on (InternVL checkpoints every encoder layer while training), and
        the ViT's final norm follows only the last block, so ``-1`` is ``forward_features``.
        InternVL's intermediate hidden states are taken before any norm (InternViT has none; the
        InternViT layout here has an identity ``norm``).
        """
        vit = self.vision_model
        depth = len(vit.blocks)
        n_blocks = self.select_layer if self.select_layer >= 0 else depth + 1 + self.select_layer
        if not 0 <= n_blocks <= depth:
            raise ValueError(f"select_layer {self.select_layer} out of range for a {depth}-block ViT")
        x = vit.patch_embed(pixel_values)
        x = vit._pos_embed(x)
        x = vit.patch_drop(x)
        x = vit.norm_pre(x)
        blocks = vit.blocks[:n_blocks]
        if n_blocks and vit.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(blocks, x)
        else:
            x = blocks(x)
        return vit.norm(x) if n_blocks == depth else x

    def extract_feature(self, pixel_values: Tensor) -> Tensor:
        """Project tiles to LLM image tokens.

        Args:
            pixel_values: (T, 3, S, S) normalised tiles.

        Returns:
            (T, num_image_token, llm_hidden).
        """
        x = self._vit_hidden(pixel_values)[:, 1:, :]  # drop CLS: (T, h*w, C)
        t, n, c = x.shape
        side = int(round(n**0.5))
        if side * side != n:
            raise ValueError(f"tiles must be square; got {n} patches")
        x = x.reshape(t, side, side, c)
        x = pixel_shuffle(x, scale_factor=self.downsample_ratio, version=self.ps_version)  # (T, s', s', 4C)
        x = x.reshape(t, -1, x.shape[-1])
        return self.mlp1(x)  # (T, num_image_token, llm_hidden)

    def forward(
        self,
        pixel_values: Tensor | None,
        input_ids: Tensor,
        attention_mask: Tensor,
        labels: Tensor | None = None,
        return_logits: bool = True,
    ) -> ViTPOutput:
        """Embed text, place image features at ``<IMG_CONTEXT>`` positions, apply VRL, run the LM.

        Args:
            pixel_values: (T, 3, S, S) all tiles of the batch concatenated in sample order (or
                ``None`` / empty for a text-only batch).
            input_ids: (B, L) with ``num_image_token`` ``<IMG_CONTEXT>`` ids per tile.
            attention_mask: (B, L) 1 for tokens, 0 for padding.
            labels: (B, L) targets with -100 where no loss, or ``None``.
            return_logits: ``False`` (with ``labels``) computes the LM head on the labelled
                positions only, the few answer tokens (3 % of a default batch), and returns no
                logits: the same loss for a fraction of the head's cost (what training uses).

        Returns:
            :class:`ViTPOutput`; ``loss`` is the mean next-token cross-entropy over labelled tokens.
        """
        if attention_mask is None:
            raise ValueError("attention_mask is required (gapped position ids need an explicit mask)")
        embed = self.language_model.get_input_embeddings()
        inputs_embeds = embed(input_ids)  # (B, L, H)
        image_mask = input_ids == self.img_context_token_id  # (B, L)
        n_slots = int(image_mask.sum())
        n_tiles = 0 if pixel_values is None else int(pixel_values.shape[0])
        if n_slots != n_tiles * self.num_image_token:
            raise ValueError(
                f"input_ids hold {n_slots} <IMG_CONTEXT> tokens but {n_tiles} tiles give "
                f"{n_tiles * self.num_image_token} image tokens ({self.num_image_token} per tile)"
            )
        if n_tiles:
            assert pixel_values is not None
            vit_embeds = self.extract_feature(pixel_values).to(inputs_embeds.dtype)  # (T, n, H)
            inputs_embeds = inputs_embeds.masked_scatter(
                image_mask.unsqueeze(-1), vit_embeds.reshape(-1, vit_embeds.shape[-1])
            )

        # Right/left padding both give 0, 1, 2, ... over the real tokens.
        position_ids = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)  # (B, L)
        if labels is None:
            labels_in = torch.full_like(input_ids, -100)
        else:
            labels_in = labels
        kept, total = n_slots, n_slots
        if self.training and self.vrl_ratio > 0:
            res = visual_robustness_drop(
                inputs_embeds,
                attention_mask,
                labels_in,
                position_ids,
                image_mask,
                ratio=self.vrl_ratio,
                prob=self.vrl_prob,
                generator=self.vrl_generator,
                reference_mode=self.vrl_reference_mode,
            )
            inputs_embeds, attention_mask, labels_in, position_ids = (
                res.inputs_embeds,
                res.attention_mask,
                res.labels,
                res.position_ids,
            )
            kept, total = int(res.kept_per_sample.sum()), int(res.total_per_sample.sum())

        decoder = self.language_model.get_decoder()
        head = self.language_model.get_output_embeddings()
        if not return_logits and labels is not None and decoder is not None and head is not None:
            hidden = decoder(
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=False,
            ).last_hidden_state  # (B, L', H)
            # position t predicts token t + 1; the head runs on the answer positions only
            ce, rows = labelled_token_ce(head, hidden[:, :-1], labels_in[:, 1:])  # (N,) each
            answer = weighted_answer_loss(ce, rows, int(input_ids.shape[0]), self.loss_reduction)
            return ViTPOutput(answer, None, kept, total)
        out = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
        )
        full_logits: Tensor = out.logits  # (B, L', V)
        loss = None if labels is None else answer_loss(full_logits, labels_in, self.loss_reduction)
        return ViTPOutput(loss, full_logits, kept, total)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute ViT blocks and LM layers in the backward pass to save memory."""
        self.vision_model.set_grad_checkpointing(enable)
        if enable:
            self.language_model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        else:
            self.language_model.gradient_checkpointing_disable()
