"""Turn a released fine-tuned reference checkpoint into a ``model.ckpt`` that ``vitp-geo infer`` runs.

``convert_release(checkpoint, config, out)``:

1. reads the checkpoint: an mm* torch pickle (``{"state_dict": ..., "meta": ...}``, loaded with
   ``weights_only=True``; anything else is refused) or a ``.safetensors`` file;
2. reads the benchmark config (``configs/finetune/<task>/<dataset>.yaml``) for what the weights
   do not say: classes, detector settings (NMS, score threshold, detections per image), head
   (its width, a change model's fusion and the FPN kind come from the checkpoint's shapes);
3. builds our model in the reference's layout: the config's backbone with the checkpoint's
   patch size (kernel 16), width, depth and position grid, no class token (the reference's
   ``InternViTAdapter`` has none), the deformable ViT-Adapter with LayerNorm
   (``norm="layer"``, interaction LayerNorm eps 1e-5) and the deform ratio the ``value_proj``
   shapes give, the reference's ``SimpleFPN`` or FPN as the ``neck.*`` keys say; a detector's
   heads trained with more classes than the config's (mmdet's default 80 in the SSDD model) keep
   the config's first ones when the checkpoint's ``meta`` names those (``_keep_config_classes``);
4. maps every key through ``vitp_geo.convert.keymap`` (one table): a key neither mapped nor
   in the ignore list, a key of our model that nothing fills, or a shape that does not fit is an
   error naming the keys;
5. writes ``out`` atomically: the weights under ``model.*`` and a ``ModelCard`` (classes,
   colours and bands from the config; ImageNet mean / std × 255, as every reference config
   normalises, whatever the config says; raw 8-bit RGB input; the reference's training size as
   ``tile_size``) plus ``converted_from``.
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

from vitp_geo.convert.keymap import FPN, LAYOUTS, RESHAPES, SIMPLE_FPN, Rule, ignored_reason
from vitp_geo.io.atomic import atomic_output
from vitp_geo.io.model_card import CARD_KEY, ModelCard
from vitp_geo.io.torch_files import load_error
from vitp_geo.models.convert import check_finite_weights, read_weights_file

# The reference normalises 0–255 RGB with ImageNet statistics (img_norm_cfg of every config).
REFERENCE_MEAN = (123.675, 116.28, 103.53)
REFERENCE_STD = (58.395, 57.12, 57.375)
# The reference's InternViTAdapter builds its interaction LayerNorms with torch's default eps.
REFERENCE_ATTN_NORM_EPS = 1e-5
_SHOWN = 8  # keys named in one error line


def _names(keys: list[str]) -> str:
    more = f" (and {len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else ""
    return ", ".join(sorted(keys)[:_SHOWN]) + more


def read_release_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The tensors and ``meta`` of a released checkpoint (``.safetensors``: no meta).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a weights-only torch pickle with a ``state_dict`` of tensors, or an
            unreadable safetensors file (the path is named).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(read_weights_file(path, load_file)), {}
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # refused pickle, truncated file, not a torch file at all
        raise ValueError(f"{path}: {load_error(err, 'a weights-only PyTorch checkpoint')}") from err
    if not isinstance(obj, dict) or not isinstance(obj.get("state_dict"), dict):
        found = sorted(obj)[:5] if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"{path}: not an mm* checkpoint (expected a 'state_dict' entry, found {found})")
    state = obj["state_dict"]
    bad = [str(k) for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise ValueError(f"{path}: state_dict entries that are not tensors: {_names(bad)}")
    meta = obj.get("meta")
    return dict(state), dict(meta) if isinstance(meta, dict) else {}


def _read_config(path: Path) -> tuple[type, dict[str, Any]]:
    """The task class and the ``model.init_args`` of a finetune config (the data section is not read)."""
    import yaml

    from vitp_geo.tasks.base import DenseTask

    if not path.is_file():
        raise FileNotFoundError(f"config not found: {path}")
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from err
    model = cfg.get("model") if isinstance(cfg, dict) else None
    if not isinstance(model, dict) or not isinstance(model.get("class_path"), str):
        raise ValueError(f"{path}: needs model.class_path (a finetune config)")
    module_name, _, cls_name = model["class_path"].rpartition(".")
    try:
        task_cls = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"{path}: model.class_path {model['class_path']!r} cannot be imported") from err
    if not (isinstance(task_cls, type) and issubclass(task_cls, DenseTask)):
        raise ValueError(f"{path}: model.class_path {model['class_path']!r} is not a vitp-geo task")
    return task_cls, dict(model.get("init_args") or {})


def _hparams(task_cls: Any, init_args: dict[str, Any], path: Path) -> dict[str, Any]:
    """The task's hyper-parameters, signature and group defaults ∪ config, under the flat names its
    ``model_fields`` reads (``tasks.args.flat_hparams``); a pre-group flat key is refused naming the new one."""
    from vitp_geo.tasks.args import GROUPS, flat_hparams, old_spelling

    params = inspect.signature(task_cls).parameters  # __init__'s, without self
    for key in init_args:
        message = old_spelling(key) if key not in GROUPS or not isinstance(init_args[key], dict) else None
        if message is not None:
            raise ValueError(f"{path}: {message}")
    unknown = sorted(set(init_args) - set(params))
    if unknown:
        raise ValueError(f"{path}: model.init_args has keys {task_cls.__name__} does not take: {unknown}")
    hp = {k: p.default for k, p in params.items() if k != "self" and p.default is not inspect.Parameter.empty}
    hp.update(init_args)
    try:
        groups = task_cls.grouped(*(init_args.get(g) for g in GROUPS))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: model.init_args: {err}") from err
    hp.update(zip(GROUPS, groups, strict=True))
    return flat_hparams(hp)  # the flat names the task's model_fields / class_names read


def _layout(kind: str, hp: dict[str, Any], path: Path) -> str:
    if kind in ("segmentation", "change") and hp.get("head", "upernet") == "upernet":
        return "upernet"
    if kind == "detection" and hp.get("box_type") == "obb" and hp.get("rpn") == "oriented":
        return "oriented_rcnn"
    if kind == "detection" and hp.get("box_type", "hbb") == "hbb" and hp.get("roi_head") == "cascade":
        return "cascade_rcnn"
    if kind == "detection" and hp.get("box_type", "hbb") == "hbb" and hp.get("roi_head") == "mask":
        return "mask_rcnn"
    raise ValueError(
        f"{path}: no released-checkpoint layout for this config (converted: Oriented R-CNN, box_type obb "
        f"with rpn oriented; Cascade R-CNN, box_type hbb with roi_head cascade; Mask R-CNN, box_type hbb "
        f"with roi_head mask; segmentation or change with head upernet), got {kind}"
    )


# mmdet's per-class head rows: the classifier (K + 1 rows, background last), class-specific box
# deltas (4 or, mmrotate, 5 rows a class) and mask logit maps (one a class).
_FC_CLS = re.compile(r"roi_head\.bbox_head\.(\d+\.)?fc_cls\.(weight|bias)")
_FC_REG = re.compile(r"roi_head\.bbox_head\.(\d+\.)?fc_reg\.(weight|bias)")
_MASK_LOGITS = re.compile(r"roi_head\.mask_head\.conv_logits\.(weight|bias)")


def _keep_config_classes(
    state: dict[str, Tensor], k: int, meta_classes: int | None
) -> tuple[dict[str, Tensor], list[str]]:
    """``state`` with the detection heads cut to the config's ``k`` classes, and what was cut.

    mmdet does not take a head's ``num_classes`` from the dataset: the reference's SSDD Mask
    R-CNN keeps mmdet's default 80 for its one class (``ship``, the checkpoint's ``meta``
    ``CLASSES``), so its heads have 80 classes of which 79 never had a positive sample. When the
    checkpoint's ``meta`` names exactly the config's ``k`` classes, the first ``k`` (and the
    background) are kept; their softmax then runs over k + 1 logits instead of 81, so scores may
    differ slightly from the reference's (``docs/detection.md``). Any other mismatch is an error
    naming both counts.
    """
    cls_key = next((key for key in sorted(state) if _FC_CLS.fullmatch(key) and key.endswith("weight")), None)
    if cls_key is None:
        return state, []
    k_ckpt = int(state[cls_key].shape[0]) - 1
    if k_ckpt == k:
        return state, []
    if k_ckpt < k or meta_classes != k:
        said = "no meta CLASSES" if meta_classes is None else f"meta CLASSES naming {meta_classes}"
        raise ValueError(
            f"{cls_key} has {k_ckpt + 1} rows ({k_ckpt} classes and background), the config has {k} classes "
            f"(and the checkpoint {said}): only a checkpoint whose meta CLASSES are the config's may have more "
            "head classes (mmdet's default num_classes left in its config), of which the first are kept"
        )
    out = dict(state)
    cut: list[str] = []
    for key, t in state.items():
        rows = int(t.shape[0]) if t.ndim else 0
        if _FC_CLS.fullmatch(key):
            out[key] = torch.cat([t[:k], t[-1:]])  # background stays last for the key map's roll
        elif _FC_REG.fullmatch(key) and rows in (4 * k_ckpt, 5 * k_ckpt):
            out[key] = t[: rows // k_ckpt * k]
        elif _MASK_LOGITS.fullmatch(key) and rows == k_ckpt:
            out[key] = t[:k]
        else:
            continue
        cut.append(f"{key} (head classes {k + 1}-{k_ckpt} of {k_ckpt}: not in meta CLASSES)")
    return out, cut


def _tensor(state: dict[str, Tensor], key: str) -> Tensor:
    if key not in state:
        raise ValueError(f"missing key {key} in the checkpoint")
    return state[key]


def _backbone(name: str, state: dict[str, Tensor]) -> Any:
    """The config's timm ViT with the checkpoint's patch size, grid and no class token; its width and
    depth must be the checkpoint's."""
    from vitp_geo.tasks.backbone import rebuild_backbone

    patch_w = _tensor(state, "backbone.embeddings.patch_embedding.weight")  # (D, 3, p, p)
    pos = _tensor(state, "backbone.embeddings.position_embedding")  # (1, 1 + g·g, D)
    depth = 1 + max(
        (int(m.group(1)) for k in state if (m := re.match(r"backbone\.layers\.(\d+)\.", k))), default=-1
    )
    grid = round(max(pos.shape[1] - 1, 0) ** 0.5) if pos.ndim == 3 else 0
    if grid == 0 or grid * grid != pos.shape[1] - 1:
        raise ValueError(
            f"backbone.embeddings.position_embedding has shape {tuple(pos.shape)}, not (1, 1 + g·g, D)"
        )
    patch = int(patch_w.shape[-1])
    kwargs = dict(
        patch_size=patch,
        img_size=grid * patch,
        in_chans=int(patch_w.shape[1]),
        class_token=False,  # the reference's InternViTAdapter has no class token
        global_pool="avg",
        num_classes=0,
    )
    vit = rebuild_backbone({"arch": name, "model_kwargs": kwargs})
    dim = int(patch_w.shape[0])
    if dim != int(vit.embed_dim) or depth != len(vit.blocks):
        raise ValueError(
            f"the checkpoint's ViT (width {dim} from backbone.embeddings.patch_embedding.weight, {depth} "
            f"backbone.layers) is not the config's backbone {name} (width {vit.embed_dim}, depth "
            f"{len(vit.blocks)})"
        )
    return vit


def _map_keys(
    state: dict[str, Tensor], rules: list[Rule], expected: dict[str, Tensor]
) -> tuple[dict[str, Tensor], list[str]]:
    """Our state dict from ``state`` by ``rules``; raises naming leftover, missing or misshapen keys."""
    out: dict[str, Tensor] = {}
    leftover: list[str] = []
    ignored: list[str] = []
    for key, value in state.items():
        for rule in rules:
            target = rule.apply(key)
            if target is not None:
                break
        else:
            if ignored_reason(key) is not None:
                ignored.append(key)
            else:
                leftover.append(key)
            continue
        if target not in expected:
            leftover.append(key)
            continue
        try:
            value = RESHAPES[rule.reshape](value)
        except ValueError as err:
            raise ValueError(f"{key}: {err}") from err
        if tuple(value.shape) != tuple(expected[target].shape):
            raise ValueError(
                f"{key} has shape {tuple(value.shape)} (as {target}), the model wants "
                f"{tuple(expected[target].shape)}"
            )
        out[target] = value.to(expected[target].dtype)
    if leftover:
        raise ValueError(f"keys the converter does not map (and does not ignore): {_names(leftover)}")
    missing = [k for k in expected if k not in out]
    if missing:
        named = [next((src for r in rules if (src := r.source_for(k))), None) for k in missing]
        shown = [f"{src} (our {k})" if src else k for k, src in zip(missing, named, strict=True)]
        raise ValueError(f"keys missing from the checkpoint: {_names(shown)}")
    return out, ignored


def convert_state_dict(
    state: dict[str, Tensor], config: str | Path, meta_classes: int | None = None
) -> tuple[torch.nn.Module, dict[str, Any], ModelCard, list[str]]:
    """Build the config's model in the reference's layout and fill it from ``state``.

    Args:
        state: the checkpoint's tensors.
        config: the benchmark config.
        meta_classes: how many classes the checkpoint's ``meta`` ``CLASSES`` name (None: no meta);
            a detector whose heads have more classes keeps the config's first ones only when
            this equals the config's count (:func:`_keep_config_classes`).

    Returns:
        (model in eval mode, ``arch``, model card, source keys left out on purpose: ignored keys
        and the head rows of classes cut away).

    Raises:
        ValueError: a config this converter has no layout for; leftover, missing or misshapen keys.
    """
    from vitp_geo.tasks.base import DEFAULT_COLORS
    from vitp_geo.tasks.models import arch_for, assemble

    config = Path(config)
    task_cls: Any  # a DenseTask subclass, used unbound on a stand-in holding its hyper-parameters
    task_cls, init_args = _read_config(config)
    hp = _hparams(task_cls, init_args, config)
    kind = str(task_cls.KIND)
    layout = _layout(kind, hp, config)
    rules = [r for table in LAYOUTS[layout] for r in table]
    if kind == "detection":  # SimpleFPN (LayerNorm ``ln``) or plain FPN (conv biases), as the keys say
        simple = any(re.fullmatch(r"neck\.lateral_convs\.\d+\.ln\.weight", k) for k in state)
        hp["fpn"] = "simple_fpn" if simple else "fpn"
        rules += SIMPLE_FPN if simple else FPN
        state, cut = _keep_config_classes(state, int(hp["num_classes"]), meta_classes)
    else:
        cut = []
    hp["neck"] = "deformable_adapter"
    vit = _backbone(str(hp["backbone"]), state)
    hp["in_channels"] = channels = int(vit.patch_embed.proj.in_channels)  # the reference's: RGB
    if hp.get("bands") is not None and len(hp["bands"]) != channels:
        raise ValueError(
            f"{config}: model.init_args.inputs.bands has {len(hp['bands'])} values, the model takes {channels}"
        )
    if layout == "upernet":  # the head's width and (change) the fusion, as the checkpoint has them
        hp["head_channels"] = int(_tensor(state, "decode_head.conv_seg.weight").shape[1])
        if kind == "change":  # open-cd's FeatureFusionNeck 'concat' doubles the head's input width
            lateral_in = int(_tensor(state, "decode_head.lateral_convs.0.conv.weight").shape[1])
            if lateral_in != 2 * int(vit.embed_dim):
                raise ValueError(
                    f"decode_head.lateral_convs.0.conv.weight takes {lateral_in} channels: only open-cd's "
                    f"'concat' fusion ({2 * int(vit.embed_dim)}) is converted"
                )
            hp["fusion"] = "concat"
    fields = task_cls.model_fields(SimpleNamespace(hp=hp))  # what the task itself would build
    value_proj = _tensor(state, "backbone.interactions.0.injector.attn.value_proj.weight")  # (D·r, D)
    fields["neck_options"] = {
        "norm": "layer",
        "attn_norm_eps": REFERENCE_ATTN_NORM_EPS,
        "deform_ratio": value_proj.shape[0] / value_proj.shape[1],
    }
    model = assemble(vit, fields)
    arch = arch_for(vit, model, **fields)
    mapped, ignored = _map_keys(state, rules, model.state_dict())
    model.load_state_dict(mapped, strict=True)
    # the task's own class-name rule (change: unchanged / changed), on the same stand-in
    names = list(task_cls.class_names.fget(SimpleNamespace(hp=hp, num_classes=int(fields["num_classes"]))))
    k = len(names)
    colors = hp.get("class_colors") or [DEFAULT_COLORS[i % len(DEFAULT_COLORS)] for i in range(k)]
    card = ModelCard(
        task=kind,
        class_names=names,
        class_colors=[(int(c[0]), int(c[1]), int(c[2])) for c in colors],
        bands=list(hp.get("bands") or range(1, channels + 1)),
        # the statistics the weights were trained with (every reference config's), not the config's
        mean=list(REFERENCE_MEAN),
        std=list(REFERENCE_STD),
        tile_size=int(vit.patch_embed.grid_size[0] * vit.patch_embed.patch_size[0]),
        arch=arch,
        render={"raw": True, "dtype": "uint8"},  # the reference reads 8-bit RGB images as they are
    )
    return model.eval(), arch, card, ignored + cut


def convert_release(checkpoint: str | Path, config: str | Path, out: str | Path) -> tuple[Path, list[str]]:
    """Convert a released reference checkpoint into ``out`` (module doc).

    Returns:
        (``out``, the source keys left out on purpose: ``keymap.IGNORED`` and cut head classes).

    Raises:
        FileNotFoundError: the checkpoint or config is missing.
        ValueError: unreadable checkpoint, class count differing from the checkpoint's ``meta``,
            leftover / missing / misshapen keys, non-finite weights (all named).
    """
    checkpoint, out = Path(checkpoint), Path(out)
    state, meta = read_release_checkpoint(checkpoint)
    check_finite_weights(state, checkpoint)
    classes = meta.get("CLASSES")
    named = len(classes) if isinstance(classes, list | tuple) else None
    try:
        model, _, card, ignored = convert_state_dict(state, config, named)
    except ValueError as err:
        raise ValueError(f"{checkpoint}: {err}") from err
    if isinstance(classes, list | tuple) and len(classes) != len(card.class_names):
        raise ValueError(
            f"{checkpoint}: meta CLASSES has {len(classes)} classes, the config {config} has "
            f"{len(card.class_names)}"
        )
    ckpt = {
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        CARD_KEY: card.to_dict(),
        "converted_from": {"checkpoint": checkpoint.name, "config": Path(config).name},
    }
    with atomic_output(out) as tmp:
        torch.save(ckpt, str(tmp))
    return out, ignored
