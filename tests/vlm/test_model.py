"""The ViTP VLM: InternVL-directory loading parity, forward semantics, training, full-size counts."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from models.internvit_reference import internvit_forward, make_internvit_state_dict
from safetensors.torch import save_file

from vitp_geo.models import build_vision_tower
from vitp_geo.vlm import build_offline_tokenizer, build_tiny_vlm, load_internvl, tokenize_conversation
from vitp_geo.vlm.build import build_llm, qwen2_0_5b_config
from vitp_geo.vlm.model import LossReduction

V_DIM, V_DEPTH, V_HEADS, GRID = 48, 2, 3, 4  # 56 px tiles → 16 patches → 4 image tokens
L_HIDDEN = 32


@pytest.fixture(scope="module")
def tok():
    return build_offline_tokenizer()


def _llm_config(vocab: int, tok) -> dict:
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "vocab_size": vocab,
        "hidden_size": L_HIDDEN,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "attn_implementation": "flash_attention_2",
        "_name_or_path": "Qwen/Qwen2.5-0.5B-Instruct",
        "pad_token_id": tok.pad_token_id,
        "eos_token_id": tok.eos_token_id,
    }


def make_internvl_dir(path, tok, sharded: bool = True) -> dict[str, torch.Tensor]:
    """A miniature InternVL2.5-1B-shaped release directory; returns its tensors (original keys)."""
    path.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(path))
    vocab = len(tok)
    cfg = {
        "architectures": ["InternVLChatModel"],
        "auto_map": {"AutoModel": "modeling_internvl_chat.InternVLChatModel"},
        "model_type": "internvl_chat",
        "downsample_ratio": 0.5,
        "dynamic_image_size": True,
        "force_image_size": GRID * 14,
        "max_dynamic_patch": 12,
        "ps_version": "v2",
        "select_layer": -1,
        "template": "internvl2_5",
        "use_thumbnail": True,
        "vision_config": {
            "architectures": ["InternVisionModel"],
            "model_type": "intern_vit_6b",
            "hidden_size": V_DIM,
            "intermediate_size": 4 * V_DIM,
            "num_attention_heads": V_HEADS,
            "num_hidden_layers": V_DEPTH,
            "image_size": GRID * 14,
            "patch_size": 14,
            "qkv_bias": True,
            "qk_normalization": False,
            "norm_type": "layer_norm",
            "layer_norm_eps": 1e-6,
            "drop_path_rate": 0.0,
            "use_flash_attn": True,
        },
        "llm_config": _llm_config(vocab, tok),
    }
    (path / "config.json").write_text(json.dumps(cfg, indent=2))
    g = torch.Generator().manual_seed(7)
    sd = make_internvit_state_dict(V_DIM, V_DEPTH, GRID, prefix="vision_model.", seed=3)
    in_dim = 4 * V_DIM
    sd.update(
        {
            "mlp1.0.weight": 1 + 0.1 * torch.randn(in_dim, generator=g),
            "mlp1.0.bias": 0.1 * torch.randn(in_dim, generator=g),
            "mlp1.1.weight": 0.1 * torch.randn(L_HIDDEN, in_dim, generator=g),
            "mlp1.1.bias": 0.1 * torch.randn(L_HIDDEN, generator=g),
            "mlp1.3.weight": 0.1 * torch.randn(L_HIDDEN, L_HIDDEN, generator=g),
            "mlp1.3.bias": 0.1 * torch.randn(L_HIDDEN, generator=g),
        }
    )
    torch.manual_seed(11)
    llm = build_llm(_llm_config(vocab, tok))
    sd.update({f"language_model.{k}": v.detach().clone() for k, v in llm.state_dict().items()})
    sd = {k: v.contiguous() for k, v in sd.items()}
    if sharded:
        keys = sorted(sd)
        shards = {
            "model-00001-of-00002.safetensors": keys[: len(keys) // 2],
            "model-00002-of-00002.safetensors": keys[len(keys) // 2 :],
        }
        for name, ks in shards.items():
            save_file({k: sd[k] for k in ks}, str(path / name), metadata={"format": "pt"})
        index = {"metadata": {}, "weight_map": {k: name for name, ks in shards.items() for k in ks}}
        (path / "model.safetensors.index.json").write_text(json.dumps(index))
    else:
        save_file(sd, str(path / "model.safetensors"), metadata={"format": "pt"})
    return sd


def reference_internvl_logits(sd, cfg_dir, tok, pixel_values, input_ids, attention_mask):
    """InternVL-style forward on the ORIGINAL keys: extract_feature + embedding scatter + LM."""
    vit = internvit_forward(sd, pixel_values, V_HEADS)[:, 1:, :]  # drop CLS
    n, hw, c = vit.shape
    h = w = int(hw**0.5)
    x = vit.reshape(n, w, h, c)
    x = x.view(n, w, h // 2, c * 2).permute(0, 2, 1, 3).contiguous()
    x = x.view(n, h // 2, w // 2, c * 4).permute(0, 2, 1, 3).contiguous()  # ps_version v2
    x = x.reshape(n, -1, c * 4)
    x = F.layer_norm(x, (c * 4,), sd["mlp1.0.weight"], sd["mlp1.0.bias"], eps=1e-5)
    x = F.linear(
        F.gelu(F.linear(x, sd["mlp1.1.weight"], sd["mlp1.1.bias"])), sd["mlp1.3.weight"], sd["mlp1.3.bias"]
    )
    emb = sd["language_model.model.embed_tokens.weight"][input_ids].clone()  # (B, L, H)
    selected = input_ids == tok.convert_tokens_to_ids("<IMG_CONTEXT>")
    emb[selected] = x.reshape(-1, x.shape[-1])
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = json.loads((cfg_dir / "config.json").read_text())["llm_config"]
    lm = Qwen2ForCausalLM(
        Qwen2Config(**{k: v for k, v in cfg.items() if k not in {"attn_implementation", "torch_dtype"}})
    )
    lm.load_state_dict(
        {k[len("language_model.") :]: v for k, v in sd.items() if k.startswith("language_model.")}
    )
    lm.eval()
    return lm(inputs_embeds=emb, attention_mask=attention_mask).logits


def _batch(tok, tiles_per_sample: list[int], per_tile: int):
    seqs = []
    for i, t in enumerate(tiles_per_sample):
        conv = [
            {"from": "human", "value": "<image>\nHow many buildings?"},
            {"from": "gpt", "value": f"There are {i + 2}."},
        ]
        seqs.append(tokenize_conversation(conv, tok, [t * per_tile], max_length=1024, system_message=""))
    length = max(len(s[0]) for s in seqs)
    ids = torch.full((len(seqs), length), tok.pad_token_id)
    labels = torch.full((len(seqs), length), -100)
    mask = torch.zeros(len(seqs), length, dtype=torch.long)
    for i, (a, b) in enumerate(seqs):
        ids[i, : len(a)], labels[i, : len(a)], mask[i, : len(a)] = a, b, 1
    return ids, labels, mask


@pytest.mark.parametrize("sharded", [True, False], ids=["sharded", "single-file"])
def test_load_internvl_directory_matches_reference(tmp_path, tok, sharded):
    d = tmp_path / "InternVL2_5-mini"
    sd = make_internvl_dir(d, tok, sharded=sharded)
    model, tok2 = load_internvl(d)
    model.eval()
    assert model.num_image_token == 4 and model.ps_version == "v2" and model.downsample_ratio == 0.5
    assert model.language_model.config._attn_implementation in {"sdpa", "flash_attention_2"}
    assert tok2.convert_tokens_to_ids("<IMG_CONTEXT>") == model.img_context_token_id
    ids, labels, mask = _batch(tok2, [2, 1], model.num_image_token)
    px = torch.randn(3, 3, GRID * 14, GRID * 14, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out = model(px, ids, mask, labels)
        ref = reference_internvl_logits(sd, d, tok2, px, ids, mask)
    valid = mask.bool()
    torch.testing.assert_close(out.logits[valid], ref[valid], atol=1e-5, rtol=1e-4)
    assert out.kept_image_tokens == out.total_image_tokens == 12  # eval: no VRL


def test_load_internvl_errors_name_what_is_missing(tmp_path, tok):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_internvl(tmp_path / "absent")
    d = tmp_path / "m"
    make_internvl_dir(d, tok, sharded=True)
    (d / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002.safetensors"):
        load_internvl(d)
    d2 = tmp_path / "m2"
    sd = make_internvl_dir(d2, tok, sharded=False)
    del sd["mlp1.3.bias"]
    save_file(sd, str(d2 / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing keys \['mlp1.3.bias'\]"):
        load_internvl(d2)
    (d2 / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_internvl(d2)


def test_forward_checks_image_token_count(tok):
    model = build_tiny_vlm(tok, llm_hidden=32, llm_layers=1, llm_intermediate=64).eval()
    ids, labels, mask = _batch(tok, [2], model.num_image_token)
    with pytest.raises(ValueError, match=r"hold 32 <IMG_CONTEXT> tokens but 1 tiles give 16"):
        model(torch.randn(1, 3, 112, 112), ids, mask, labels)


def test_training_forward_applies_vrl_and_keeps_answer_loss(tok):
    model = build_tiny_vlm(tok, llm_hidden=32, llm_layers=1, llm_intermediate=64, vrl_ratio=0.75)
    ids, labels, mask = _batch(tok, [3, 1], model.num_image_token)  # 48 and 16 image tokens
    px = torch.randn(4, 3, 112, 112)
    model.train()
    out = model(px, ids, mask, labels)
    assert (out.kept_image_tokens, out.total_image_tokens) == (12 + 4, 64)
    assert out.logits.shape[1] == ids.shape[1] - 36  # the longer sample lost 36 tokens
    model.eval()
    with torch.no_grad():
        assert model(px, ids, mask, labels).kept_image_tokens == 64
    model.train()
    model.vrl_prob = 0.0
    assert model(px, ids, mask, labels).logits.shape[1] == ids.shape[1]


@pytest.mark.slow
def test_tiny_vlm_loss_decreases_on_a_fixed_batch(tok):
    model = build_tiny_vlm(tok, llm_hidden=64, llm_layers=2, llm_intermediate=128, seed=0)
    model.vrl_generator = torch.Generator().manual_seed(0)
    ids, labels, mask = _batch(tok, [2, 1], model.num_image_token)
    px = torch.randn(3, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    losses = []
    for _ in range(8):
        out = model(px, ids, mask, labels)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(out.loss.item())
    assert losses[-1] < 0.75 * losses[0], losses
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses
    # Gradients reached the vision tower through the projector and the kept image tokens.
    out = model(px, ids, mask, labels)
    out.loss.backward()
    assert model.vision_model.patch_embed.proj.weight.grad.abs().sum() > 0


def test_grad_checkpointing_gives_same_gradients(tok):
    model = build_tiny_vlm(
        tok, llm_hidden=32, llm_layers=1, llm_intermediate=64, vrl_ratio=0.0, drop_path_rate=0.0
    )
    ids, labels, mask = _batch(tok, [1], model.num_image_token)
    px = torch.randn(1, 3, 112, 112)
    model.train()
    model(px, ids, mask, labels).loss.backward()
    g0 = model.vision_model.blocks[0].attn.qkv.weight.grad.clone()
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(px, ids, mask, labels).loss.backward()
    torch.testing.assert_close(model.vision_model.blocks[0].attn.qkv.weight.grad, g0, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("select_layer", [-1, -2, 2])
def test_every_select_layer_checkpoints_the_vit_and_only_the_last_block_is_normed(tok, select_layer):
    """InternVL checkpoints every ViT layer while training, whichever hidden state it selects."""
    model = build_tiny_vlm(tok, llm_hidden=32, llm_layers=1, llm_intermediate=64, drop_path_rate=0.0)
    model.select_layer = select_layer
    vit = model.vision_model
    vit.norm = torch.nn.LayerNorm(vit.embed_dim)  # a final norm that changes values, so misplacing it shows
    calls: list[int] = []
    vit.blocks[0].register_forward_pre_hook(lambda *_: calls.append(1))
    px = torch.randn(2, 3, 112, 112)
    model.train()
    model.set_grad_checkpointing(True)
    model.extract_feature(px).sum().backward()
    assert len(calls) == 2, "block 0 must be recomputed in backward (gradient checkpointing)"
    model.eval()
    n = select_layer if select_layer >= 0 else len(vit.blocks) + 1 + select_layer
    with torch.no_grad():
        x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(px))))
        for blk in vit.blocks[:n]:
            x = blk(x)
        expected = vit.norm(x) if n == len(vit.blocks) else x
        torch.testing.assert_close(model._vit_hidden(px), expected)
        if select_layer == -1:
            torch.testing.assert_close(model._vit_hidden(px), vit.forward_features(px))


def test_full_size_internvl2_5_1b_architecture_on_meta_device():
    with torch.device("meta"):
        vit = build_vision_tower("vit_intern300m_patch14_448", drop_path_rate=0.0)
        llm = build_llm(qwen2_0_5b_config(), attn_implementation="sdpa")
    n_vit = sum(p.numel() for p in vit.parameters())
    n_llm = sum(p.numel() for p in llm.parameters())  # tied embeddings are counted once
    assert 300e6 < n_vit < 308e6, n_vit
    assert 490e6 < n_llm < 498e6, n_llm
    assert llm.lm_head.weight is llm.model.embed_tokens.weight


def test_tiny_vlm_refuses_llm_sizes_that_do_not_divide_into_heads():
    with pytest.raises(ValueError, match=r"llm_hidden \(500\) must be a multiple of llm_heads \(6\)"):
        build_tiny_vlm(build_offline_tokenizer(), llm_hidden=500, llm_heads=6, llm_kv_heads=2)


@pytest.mark.parametrize("rate", [0.0, 0.3])
def test_drop_path_reaches_a_real_internvl_vit(tmp_path, tok, rate):
    """``--drop-path`` applies with ``--model-path`` too (it used to apply to the tiny model only)."""
    from vitp_geo.pretrain.config import PretrainConfig
    from vitp_geo.pretrain.run import build_parts

    d = tmp_path / "InternVL2_5-mini"
    make_internvl_dir(d, tok, sharded=False)
    recipe = tmp_path / "recipe.json"
    recipe.write_text("{}")
    cfg = PretrainConfig(model_path=str(d), data=str(recipe), drop_path=rate)
    model, _, _, start = build_parts(cfg, tmp_path / "run")
    assert start == "InternViT weights of --model-path"
    rates = [float(getattr(b.drop_path1, "drop_prob", 0.0)) for b in model.vision_model.blocks]
    assert rates[-1] == pytest.approx(rate) and rates == sorted(rates)  # timm's linear rule up to the rate


@pytest.mark.parametrize("reduction", ["token", "sample", "square"])
def test_loss_only_forward_matches_the_full_logits_loss_and_its_gradients(tok, reduction):
    """Training computes the LM head on answer positions only: same loss and gradients, VRL included."""
    model = build_tiny_vlm(
        tok, llm_hidden=32, llm_layers=1, llm_intermediate=64, vrl_ratio=0.75, drop_path_rate=0.0
    )
    model.loss_reduction = LossReduction(reduction)
    ids, labels, mask = _batch(tok, [3, 1], model.num_image_token)
    labels[1, -3:] = -100  # answers of different lengths, so the reductions differ
    px = torch.randn(4, 3, 112, 112, generator=torch.Generator().manual_seed(1))
    model.train()
    results = []
    for return_logits in (True, False):
        model.zero_grad()
        model.vrl_generator = torch.Generator().manual_seed(7)  # the same drops in both passes
        out = model(px, ids, mask, labels, return_logits=return_logits)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((out, grads))
    (full, full_grads), (fast, fast_grads) = results
    assert full.kept_image_tokens == fast.kept_image_tokens < full.total_image_tokens  # VRL fired
    assert fast.logits is None and full.logits is not None
    assert float(fast.loss.detach()) == pytest.approx(float(full.loss.detach()), rel=1e-5)
    assert fast_grads.keys() == full_grads.keys()
    for name, grad in full_grads.items():
        torch.testing.assert_close(fast_grads[name], grad, atol=1e-6, rtol=1e-4, msg=name)
