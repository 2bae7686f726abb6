"""The attention kernel of a training step: math under CPU bf16 autocast, torch's choice elsewhere."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vitp_geo.models.attention import MATH_MAX_TOKENS, cpu_bf16_autocast, training_attention, vit_tokens


def _graph_names(t: torch.Tensor) -> set[str]:
    """Names of every autograd node behind ``t``."""
    seen, stack, names = set(), [t.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        stack.extend(n for n, _ in node.next_functions)
    return names


def _qkv(seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(4, 3, 65, 64, generator=g, requires_grad=True) for _ in range(3))


def _uses_flash(autocast: bool, helper: bool, tokens: int = 65) -> bool:
    q, k, v = _qkv()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        if helper:
            with training_attention(tokens):
                out = F.scaled_dot_product_attention(q, k, v)
        else:
            out = F.scaled_dot_product_attention(q, k, v)
    return any("Flash" in n for n in _graph_names(out))


def test_under_cpu_bf16_autocast_a_training_step_takes_the_math_kernel() -> None:
    # torch's own choice is its fused flash kernel (slow backward in bf16 on a CPU) ...
    assert _uses_flash(autocast=True, helper=False)
    # ... which the helper replaces under bf16 autocast, and leaves alone in fp32.
    assert not _uses_flash(autocast=True, helper=True)
    assert _uses_flash(autocast=False, helper=True)
    # a long sequence keeps the fused kernel: the math one would hold every L x L attention matrix
    assert not _uses_flash(autocast=True, helper=True, tokens=MATH_MAX_TOKENS)
    assert _uses_flash(autocast=True, helper=True, tokens=MATH_MAX_TOKENS + 1)


def test_vit_tokens_counts_patches_and_prefix_tokens() -> None:
    from vitp_geo.models.vit import build_vision_tower

    vit = build_vision_tower("vitp_tiny_patch14_112")
    assert vit_tokens(vit) == 8 * 8 + 1  # 112 px in 14 px patches, and the class token
    assert vit_tokens(vit, (224, 224)) == 16 * 16 + 1
    assert vit.forward_features(torch.zeros(1, 3, 112, 112)).shape[1] == vit_tokens(vit)
    assert vit_tokens(nn.Linear(2, 2)) == 0  # no ViT: no tokens


def test_the_math_kernel_computes_what_the_fused_one_does() -> None:
    results = []
    for helper in (False, True):
        q, k, v = _qkv(1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if helper:
                with training_attention(65):
                    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:
                out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        out.float().square().sum().backward()
        results.append((out.float(), q.grad, v.grad))
    for a, b in zip(*results, strict=True):
        assert torch.allclose(a, b, atol=3e-2, rtol=3e-2)  # bf16 rounding, not a different function


def test_the_helper_reads_the_autocast_state() -> None:
    assert not cpu_bf16_autocast()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert cpu_bf16_autocast()
    with torch.autocast("cpu", dtype=torch.float16):
        assert not cpu_bf16_autocast()


class _Recorder(nn.Module):
    """A stand-in VLM that records whether the fused flash kernel was allowed during its forward."""

    def __init__(self) -> None:
        super().__init__()
        self.vision_model = nn.Linear(2, 2)
        self.mlp1 = nn.Linear(2, 2)
        self.language_model = nn.Linear(2, 2)
        self.flash_allowed: list[bool] = []

    def forward(self, **kw: torch.Tensor) -> object:
        from types import SimpleNamespace

        self.flash_allowed.append(torch.backends.cuda.flash_sdp_enabled())
        loss = self.language_model(torch.ones(1, 2)).sum()
        return SimpleNamespace(loss=loss, kept_image_tokens=0, total_image_tokens=0)


@pytest.mark.parametrize(("bf16", "length", "math"), [(True, 2, True), (False, 2, False), (True, 600, False)])
def test_the_pretraining_step_runs_its_forward_in_the_helper(bf16: bool, length: int, math: bool) -> None:
    from vitp_geo.pretrain.module import ViTPPretrainModule

    model = _Recorder()
    module = ViTPPretrainModule(model, lr=1e-3, weight_decay=0.0, warmup_ratio=0.0, max_steps=1)
    module.log = lambda *a, **k: None  # type: ignore[method-assign]
    batch = {k: torch.zeros(1, length) for k in ("pixel_values", "input_ids", "attention_mask", "labels")}
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        module.training_step(batch, 0)
    assert model.flash_allowed == [not math]
    assert torch.backends.cuda.flash_sdp_enabled()  # restored after the step


@pytest.mark.parametrize(
    ("bf16", "size", "math"), [(True, 112, True), (False, 112, False), (True, 448, False)]
)
def test_a_fine_tuning_tasks_training_step_runs_in_the_helper(
    bf16: bool, size: int, math: bool, monkeypatch
) -> None:
    from vitp_geo.tasks.args import BackboneArgs
    from vitp_geo.tasks.segmentation import SegmentationTask

    task = SegmentationTask(head_channels=16, backbone=BackboneArgs(drop_path_rate=0.0))
    seen: list[bool] = []

    def step(batch: object, stage: str) -> torch.Tensor:
        seen.append(torch.backends.cuda.flash_sdp_enabled())
        return torch.zeros(())

    monkeypatch.setattr(task, "_step", step)
    batch = {"image": torch.zeros(1, 3, size, size)}  # 448 px: 1,025 tokens, over MATH_MAX_TOKENS
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        task.training_step(batch, 0)
        task.validation_step(batch, 0)  # no backward: evaluation keeps torch's choice
    assert seen == [not math, True]


@pytest.mark.parametrize(
    ("bf16", "size", "math"), [(True, 112, True), (False, 112, False), (True, 448, False)]
)
def test_a_detection_tasks_training_step_runs_in_the_helper(
    bf16: bool, size: int, math: bool, monkeypatch
) -> None:
    from vitp_geo.tasks.args import BackboneArgs
    from vitp_geo.tasks.detection import ObjectDetectionTask

    task = ObjectDetectionTask(
        num_classes=1, fpn_channels=16, representation=32, backbone=BackboneArgs(drop_path_rate=0.0)
    )
    task.log = task.log_dict = lambda *a, **k: None  # type: ignore[method-assign]
    seen: list[bool] = []

    def model(x: torch.Tensor, targets: object = None) -> dict[str, torch.Tensor]:
        seen.append(torch.backends.cuda.flash_sdp_enabled())
        return {"loss": torch.zeros(())}

    monkeypatch.setattr(task.model, "forward", model)
    batch = {
        "image": torch.zeros(1, 3, size, size),
        "bbox_xyxy": [torch.zeros(0, 4)],
        "label": [torch.zeros(0)],
    }
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        task.training_step(batch, 0)
    assert seen == [not math]
    assert torch.backends.cuda.flash_sdp_enabled()  # restored after the step
