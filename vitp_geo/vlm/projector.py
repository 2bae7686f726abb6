"""Pixel shuffle and the MLP projector between the vision tower and the LLM (InternVL layout)."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["build_projector", "pixel_shuffle"]


def pixel_shuffle(x: Tensor, scale_factor: float = 0.5, version: str = "v2") -> Tensor:
    """Trade spatial resolution for channels, in InternVL's exact element order.

    With ``scale_factor=0.5`` each 2×2 neighbourhood of patch features becomes one token with 4×C
    channels, so a 448 px tile (32×32 patches) gives 256 tokens.

    Args:
        x: (N, W, H, C) patch features (InternVL calls the first grid axis W).
        scale_factor: spatial factor; ``1 / scale_factor`` must divide W and H.
        version: ``"v2"`` (InternVL2 onwards: swaps the grid axes back) or ``"v1"`` (leaves the
            grid transposed, as in InternVL 1.5).

    Returns:
        (N, W·s, H·s, C / s²).
    """
    if version not in {"v1", "v2"}:
        raise ValueError(f"ps_version must be 'v1' or 'v2', got {version!r}")
    if x.ndim != 4:
        raise ValueError(f"pixel_shuffle expects (N, W, H, C), got shape {tuple(x.shape)}")
    n, w, h, c = x.shape
    inv = round(1 / scale_factor)
    if abs(inv * scale_factor - 1) > 1e-6 or w % inv or h % inv:
        raise ValueError(f"scale_factor {scale_factor} does not evenly divide the {w}x{h} grid")
    x = x.reshape(n, w, h // inv, c * inv)  # (N, W, H·s, C/s)
    x = x.permute(0, 2, 1, 3).contiguous()  # (N, H·s, W, C/s)
    x = x.reshape(n, h // inv, w // inv, c * inv * inv)  # (N, H·s, W·s, C/s²)
    if version == "v2":
        x = x.permute(0, 2, 1, 3).contiguous()  # (N, W·s, H·s, C/s²)
    return x


def build_projector(vit_hidden: int, llm_hidden: int, downsample_ratio: float = 0.5) -> nn.Sequential:
    """``LayerNorm, Linear, GELU, Linear``: InternVL's ``mlp1`` (keys ``mlp1.0/1/3`` load as-is).

    Args:
        vit_hidden: vision width C.
        llm_hidden: LLM hidden size.
        downsample_ratio: pixel-shuffle factor s; the input width is C / s².
    """
    in_dim = vit_hidden * round(1 / downsample_ratio) ** 2
    return nn.Sequential(
        nn.LayerNorm(in_dim),
        nn.Linear(in_dim, llm_hidden),
        nn.GELU(),
        nn.Linear(llm_hidden, llm_hidden),
    )
