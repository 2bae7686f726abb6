"""``vitp-geo qgis-plugin build|install``: the QGIS Processing plugin (wiring; see ``vitp_geo.qgis_plugin``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "qgis-plugin",
        help="build or install the QGIS Processing plugin",
        description="The QGIS plugin (Processing provider 'vitp': segment_scene, detect_objects, "
        "detect_changes) that runs this vitp-geo as a subprocess. Installing copies files into a QGIS "
        "profile only; QGIS's own Python is never changed.",
    )
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    b = sub.add_parser("build", help="write the zip that QGIS's 'Install from ZIP' takes")
    b.add_argument("--out", type=Path, default=Path("vitp_geo_qgis.zip"), help="zip to write")
    b.add_argument("--overwrite", action="store_true", help="replace an existing zip")
    i = sub.add_parser(
        "install",
        help="copy the plugin into a QGIS profile, enable it and point it at this vitp-geo",
    )
    i.add_argument("--profile", default="default", help="QGIS user profile (default: default)")
    i.add_argument(
        "--profiles-dir",
        type=Path,
        default=None,
        help="folder of QGIS profiles (default: $QGIS_CUSTOM_CONFIG_PATH/profiles, else QGIS's "
        "per-user folder, e.g. ~/.local/share/QGIS/QGIS3/profiles)",
    )
    i.add_argument(
        "--executable",
        default=None,
        help="the vitp-geo the plugin runs (default: this environment's; '' to use vitp-geo on PATH)",
    )


def run(args: argparse.Namespace) -> int:
    from vitp_geo.qgis_plugin import build_zip, install, plugin_source, plugin_version

    if args.action == "build":
        out = build_zip(args.out, overwrite=args.overwrite)
        print(
            f"wrote {out} (vitp_geo_qgis {plugin_version(plugin_source())}): QGIS > Plugins > "
            "Manage and Install Plugins > Install from ZIP",
            file=sys.stderr,
        )
        return 0
    target, ini, exe = install(args.profile, args.profiles_dir, args.executable)
    print(f"installed {target} and enabled it in {ini}", file=sys.stderr)
    print(
        f"vitp-geo executable: {exe or 'vitp-geo on PATH'}; restart QGIS to load the plugin", file=sys.stderr
    )
    return 0
