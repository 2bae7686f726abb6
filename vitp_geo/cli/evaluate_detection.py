"""``vitp-geo evaluate detection``: not implemented yet (placeholder so the subcommand is wired)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    del p


def run(args: argparse.Namespace) -> int:
    raise RuntimeError("vitp-geo evaluate detection is not implemented yet")
