"""Package and install the QGIS plugin (``qgis_plugin/vitp_geo_qgis``) without touching QGIS's Python.

``build_zip`` writes the zip QGIS's *Plugins > Install from ZIP* takes (one top folder,
``vitp_geo_qgis/``). ``install`` copies the plugin into a QGIS profile's ``python/plugins`` folder,
enables it in that profile's ``QGIS/QGIS3.ini`` (``[PythonPlugins] vitp_geo_qgis=true``) and
points the provider's *vitp-geo executable* setting at this environment's ``vitp-geo``. Nothing is
installed into any Python: the plugin needs only QGIS, and runs ``vitp-geo`` as a subprocess.

The plugin's files ship in the wheel as the top-level package ``vitp_geo_qgis`` (importable without
QGIS: its ``__init__`` imports nothing from QGIS); in a source checkout they are read from
``qgis_plugin/vitp_geo_qgis``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

from vitp_geo.io.atomic import atomic_output

PLUGIN_NAME = "vitp_geo_qgis"
EXECUTABLE_KEY = "Configuration\\VITP_GEO_EXECUTABLE"  # [Processing] section, as QSettings writes it
_SKIP_PARTS = ("__pycache__",)
_SKIP_SUFFIXES = (".pyc", ".pyo")


def plugin_source() -> Path:
    """The folder holding the plugin's files (installed package, else the source checkout)."""
    spec = importlib.util.find_spec(PLUGIN_NAME)
    if spec is not None and spec.origin:
        folder = Path(spec.origin).parent
        if (folder / "metadata.txt").is_file():
            return folder
    checkout = Path(__file__).resolve().parents[1] / "qgis_plugin" / PLUGIN_NAME
    if (checkout / "metadata.txt").is_file():
        return checkout
    raise FileNotFoundError(
        f"the QGIS plugin's files ({PLUGIN_NAME}/metadata.txt) are not installed with vitp-geo "
        f"and not in a source checkout ({checkout}); reinstall vitp-geo"
    )


def plugin_files(source: Path) -> list[Path]:
    """The plugin's files, relative to ``source``, sorted (no caches)."""
    files = []
    for p in sorted(source.rglob("*")):
        rel = p.relative_to(source)
        if p.is_file() and not any(x in rel.parts for x in _SKIP_PARTS) and p.suffix not in _SKIP_SUFFIXES:
            files.append(rel)
    return files


def plugin_version(source: Path) -> str:
    m = re.search(r"^version\s*=\s*(\S+)", (source / "metadata.txt").read_text(), re.MULTILINE)
    return m.group(1) if m else "?"


def build_zip(out: Path, overwrite: bool = False) -> Path:
    """Write the installable zip to ``out`` (atomically); returns ``out``."""
    if out.suffix.lower() != ".zip":
        raise ValueError(f"--out must be a .zip, got {out}")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    if out.is_dir():
        raise ValueError(f"--out {out} is a directory; give a file path (e.g. {out / 'vitp_geo_qgis.zip'})")
    source = plugin_source()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(out) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
            for rel in plugin_files(source):
                info = zipfile.ZipInfo(f"{PLUGIN_NAME}/{rel.as_posix()}", date_time=(2020, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                z.writestr(info, (source / rel).read_bytes())
    return out


def default_profiles_dir() -> Path:
    """Where QGIS keeps its user profiles (``QGIS_CUSTOM_CONFIG_PATH`` first, as QGIS does)."""
    custom = os.environ.get("QGIS_CUSTOM_CONFIG_PATH")
    if custom:
        return Path(custom) / "profiles"
    if sys.platform == "win32":
        base = Path(os.environ.get("APPDATA", Path.home() / "AppData" / "Roaming"))
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "QGIS" / "QGIS3" / "profiles"


def _ini_value(value: str) -> str:
    """A string as QSettings' INI format reads it back unchanged."""
    if re.fullmatch(r"[A-Za-z0-9_./:+-]*", value) and value.strip() == value:
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def set_ini_value(text: str, section: str, key: str, value: str) -> str:
    """``text`` (a QSettings INI file) with ``key=value`` in ``[section]``; every other line as it was."""
    lines = text.splitlines()
    header = f"[{section}]"
    start = next((i for i, ln in enumerate(lines) if ln.strip() == header), None)
    entry = f"{key}={value}"
    if start is None:
        if lines and lines[-1].strip():
            lines.append("")
        lines += [header, entry]
        return "\n".join(lines) + "\n"
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("[")), len(lines))
    for i in range(start + 1, end):
        if lines[i].split("=", 1)[0].strip() == key:
            lines[i] = entry
            return "\n".join(lines) + "\n"
    insert = end
    while insert > start + 1 and not lines[insert - 1].strip():
        insert -= 1
    lines.insert(insert, entry)
    return "\n".join(lines) + "\n"


def install(
    profile: str = "default",
    profiles_dir: Path | None = None,
    executable: str | None = None,
) -> tuple[Path, Path, str]:
    """Copy the plugin into ``profile`` and enable it there (module doc).

    Args:
        profile: the QGIS user profile's name.
        profiles_dir: the folder of profiles (default: ``default_profiles_dir()``).
        executable: the ``vitp-geo`` the plugin runs (default: the one of this environment).

    Returns:
        (plugin folder, settings file, executable recorded).
    """
    root = profiles_dir if profiles_dir is not None else default_profiles_dir()
    folder = root / profile
    if not folder.is_dir():
        known = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        hint = f"profiles there: {', '.join(known)}" if known else "start QGIS once to create it"
        raise FileNotFoundError(f"QGIS profile {profile!r} not found: {folder} ({hint})")
    exe = executable if executable is not None else _this_executable()
    source = plugin_source()
    plugins = folder / "python" / "plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    target = plugins / PLUGIN_NAME
    staging = Path(tempfile.mkdtemp(prefix=f".{PLUGIN_NAME}.", dir=plugins))
    try:
        for rel in plugin_files(source):
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / rel, staging / rel)
        staging.chmod(0o755)
        old = None
        if target.exists():
            old = plugins / f".{PLUGIN_NAME}.old"
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
        staging.rename(target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    ini = folder / "QGIS" / "QGIS3.ini"
    text = ini.read_text(encoding="utf-8") if ini.exists() else ""
    text = set_ini_value(text, "PythonPlugins", PLUGIN_NAME, "true")
    if exe:
        text = set_ini_value(text, "Processing", EXECUTABLE_KEY, _ini_value(exe))
    ini.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(ini) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    return target, ini, exe or ""


def _this_executable() -> str:
    """This environment's ``vitp-geo`` script (beside its Python), or '' if there is none."""
    for folder in (Path(sys.executable).parent, Path(sys.argv[0]).resolve().parent):
        for name in ("vitp-geo", "vitp-geo.exe"):
            cand = folder / name
            if cand.is_file() and os.access(cand, os.X_OK):
                return str(cand)
    return shutil.which("vitp-geo") or ""
