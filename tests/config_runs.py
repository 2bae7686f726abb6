"""Running a shipped config in a test: the one CPU smoke setting every config test applies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# One training and one validation batch on the CPU in fp32 (the configs ask for bf16 on GPUs).
CPU_SMOKE_TRAINER = {"fast_dev_run": True, "accelerator": "cpu", "devices": 1, "precision": "32-true"}


def smoke_cli(cfg: dict[str, Any], root_dir: Path) -> Any:
    """LightningCLI (``run=False``) for ``cfg`` with its trainer set to ``CPU_SMOKE_TRAINER``,
    writing under ``root_dir``, without logger or progress bar; ``cfg`` is changed in place."""
    from lightning.pytorch.cli import LightningCLI

    cfg["trainer"] = dict(
        cfg["trainer"],
        **CPU_SMOKE_TRAINER,
        default_root_dir=str(root_dir),
        logger=False,
        enable_progress_bar=False,
    )
    return LightningCLI(
        args=cfg, run=False, save_config_callback=None, parser_kwargs={"exit_on_error": False}
    )


def fill_root(config: Path, root: Path, dest: Path) -> Path:
    """Copy of the shipped ``config`` at ``dest`` with only ``data.init_args.root`` set (as a user does)."""
    import yaml

    cfg = yaml.safe_load(config.read_text())
    assert cfg["data"]["init_args"]["root"] == "FILL_ME"
    cfg["data"]["init_args"]["root"] = str(root)
    dest.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return dest


def refused_finetune(config: Path, out: Path, capsys: Any, task: str = "segmentation") -> list[str]:
    """``vitp-geo finetune TASK --config CONFIG --output OUT``, which must refuse the config (exit
    status 2, ``OUT`` not created): the lines it wrote to stderr."""
    from vitp_geo.cli.main import main

    assert main(["finetune", task, "--config", str(config), "--output", str(out)]) == 2
    assert not out.exists()
    return capsys.readouterr().err.strip().splitlines()


def finetune_args(task: str, config: Path, out: Path) -> Any:
    """``vitp-geo finetune TASK --config CONFIG --output OUT --no-progress`` through the CLI's own parser."""
    import argparse

    from vitp_geo.cli import finetune

    parser = argparse.ArgumentParser()
    finetune.add_parser(parser.add_subparsers())
    return parser.parse_args(
        ["finetune", task, "--config", str(config), "--output", str(out), "--no-progress"]
    )
