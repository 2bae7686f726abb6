"""``--precision auto``: bf16 autocast where the device multiplies bf16 natively, fp32 elsewhere."""

from __future__ import annotations

import types

import pytest
import torch

from vitp_geo.pretrain import run as run_mod
from vitp_geo.pretrain.config import PretrainConfig


@pytest.mark.parametrize(
    ("native", "expected"), [(True, "bf16-mixed"), (False, "32-true")], ids=["avx512-bf16", "no-bf16"]
)
def test_auto_on_cpu_follows_native_bf16(monkeypatch, native, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(run_mod, "cpu_has_native_bf16", lambda: native)
    assert run_mod.resolve_precision(PretrainConfig()) == expected
    assert run_mod.resolve_precision(PretrainConfig(accelerator="cpu")) == expected


def test_explicit_precision_is_kept(monkeypatch):
    monkeypatch.setattr(run_mod, "cpu_has_native_bf16", lambda: True)
    assert run_mod.resolve_precision(PretrainConfig(precision="32-true")) == "32-true"


def test_cpu_accelerator_on_a_cuda_machine_does_not_take_cuda_rule(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(run_mod, "cpu_has_native_bf16", lambda: False)
    assert run_mod.resolve_precision(PretrainConfig(accelerator="cpu")) == "32-true"
    assert run_mod.resolve_precision(PretrainConfig()) == "bf16-mixed"


def test_native_bf16_check_reads_torch_cpu(monkeypatch):
    fake = types.SimpleNamespace(_is_avx512_bf16_supported=lambda: False, _is_amx_tile_supported=lambda: True)
    monkeypatch.setattr(run_mod.torch, "cpu", fake)
    assert run_mod.cpu_has_native_bf16() is True
    fake = types.SimpleNamespace(
        _is_avx512_bf16_supported=lambda: False, _is_amx_tile_supported=lambda: False
    )
    monkeypatch.setattr(run_mod.torch, "cpu", fake)
    assert run_mod.cpu_has_native_bf16() is False
    monkeypatch.setattr(run_mod.torch, "cpu", types.SimpleNamespace())  # a torch without the checks
    assert run_mod.cpu_has_native_bf16() is False
