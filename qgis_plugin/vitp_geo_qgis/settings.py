"""The provider's settings (Processing > Options > Providers > vitp-geo), read from QgsSettings."""

from qgis.core import QgsSettings

GROUP = "vitp-geo"
EXECUTABLE = "VITP_GEO_EXECUTABLE"
DEBUG = "VITP_GEO_DEBUG"
STOP_GRACE = "VITP_GEO_STOP_GRACE_S"
DEFAULT_STOP_GRACE_S = 120


def _key(name):
    return f"Processing/Configuration/{name}"


def register():
    """Show the settings in the Processing options (a no-op where Processing's Python is absent)."""
    try:
        from processing.core.ProcessingConfig import ProcessingConfig, Setting
    except ImportError:
        return
    ProcessingConfig.addSetting(
        Setting(
            GROUP,
            EXECUTABLE,
            "vitp-geo executable (empty: vitp-geo on PATH)",
            "",
            valuetype=Setting.FILE,
        )
    )
    ProcessingConfig.addSetting(Setting(GROUP, DEBUG, "Log vitp-geo's --debug output", False))
    ProcessingConfig.addSetting(
        Setting(
            GROUP,
            STOP_GRACE,
            "Seconds a cancelled run may take to save its state before it is terminated",
            DEFAULT_STOP_GRACE_S,
            valuetype=Setting.INT,
        )
    )
    ProcessingConfig.readSettings()


def unregister():
    try:
        from processing.core.ProcessingConfig import ProcessingConfig
    except ImportError:
        return
    for name in (EXECUTABLE, DEBUG, STOP_GRACE):
        if name in ProcessingConfig.settings:
            ProcessingConfig.removeSetting(name)


def executable():
    return str(QgsSettings().value(_key(EXECUTABLE), "") or "")


def debug():
    return str(QgsSettings().value(_key(DEBUG), False)).lower() in ("true", "1", "yes")


def stop_grace_s():
    try:
        return float(QgsSettings().value(_key(STOP_GRACE), DEFAULT_STOP_GRACE_S))
    except (TypeError, ValueError):
        return float(DEFAULT_STOP_GRACE_S)
