"""Drive the vitp plugin's algorithms through PyQGIS's Processing framework, headless; report JSON.

Run with Debian's Python (``/usr/bin/python3``, which has ``python3-qgis``), not the venv::

    QT_QPA_PLATFORM=offscreen QGIS_CUSTOM_CONFIG_PATH=CFG /usr/bin/python3 plugin_driver.py JOB.json

``JOB.json``: ``{"plugins": DIR, "executable": VITP_GEO, "runs": [{"alg": ..., "params": {...}, "cancel_at": 40,
"executable": PATH, "debug": true, "xyz_input": true}, ...]}``. Each run is reported in order: the exception
message (or null), the results, every progress value and phase text, the log (info / errors),
the subprocess id and whether that process still exists afterwards.

A standalone PyQGIS application keeps its QgsSettings outside the profile folder (under the
``HOME`` the test gives it), so the provider's *vitp-geo executable* setting is set here.
"""

import json
import os
import sys

sys.path.insert(0, "/usr/share/qgis/python/plugins")

from qgis.core import (  # noqa: E402
    QgsApplication,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProject,
    QgsRasterLayer,
    QgsSettings,
)


class Recorder(QgsProcessingFeedback):
    """Collects what an algorithm tells its feedback; cancels once progress reaches ``cancel_at``."""

    def __init__(self, cancel_at=None):
        super().__init__()
        self.cancel_at = cancel_at
        self.progress, self.texts, self.info, self.errors, self.commands = [], [], [], [], []
        self.progressChanged.connect(self._on_progress)

    def _on_progress(self, value):
        self.progress.append(float(value))
        if self.cancel_at is not None and value >= self.cancel_at and not self.isCanceled():
            self.cancel()

    def setProgressText(self, text):
        self.texts.append(text)
        super().setProgressText(text)

    def pushInfo(self, info):
        self.info.append(info)

    def pushCommandInfo(self, info):
        self.commands.append(info)

    def pushConsoleInfo(self, info):
        self.info.append(info)

    def pushDebugInfo(self, info):
        self.info.append(info)

    def reportError(self, error, fatalError=False):
        self.errors.append(error)


def main(job_path):
    with open(job_path) as f:
        job = json.load(f)
    app = QgsApplication([], False)
    app.initQgis()
    from processing.core.Processing import Processing

    Processing.initialize()
    import processing

    sys.path.insert(0, job["plugins"])
    import vitp_geo_qgis

    plugin = vitp_geo_qgis.classFactory(None)
    plugin.initProcessing()
    settings = QgsSettings()
    key = "Processing/Configuration/VITP_GEO_EXECUTABLE"
    reports = []
    keep = []
    for run in job["runs"]:
        settings.setValue(key, run.get("executable", job["executable"]))
        settings.setValue("Processing/Configuration/VITP_GEO_DEBUG", bool(run.get("debug")))
        params = dict(run["params"])
        if run.get("xyz_input"):  # a layer with no local file behind it
            layer = QgsRasterLayer("type=xyz&url=http://127.0.0.1:9/{z}/{x}/{y}.png", "tiles", "wms")
            QgsProject.instance().addMapLayer(layer)
            keep.append(layer)
            params["INPUT"] = layer
        feedback = Recorder(run.get("cancel_at"))
        context = QgsProcessingContext()
        context.setProject(QgsProject.instance())
        report = {"exception": None, "results": None}
        try:
            results = processing.run(run["alg"], params, feedback=feedback, context=context)
            report["results"] = {k: v for k, v in results.items() if isinstance(v, str | int | float)}
        except QgsProcessingException as err:
            report["exception"] = str(err)
        pid = next(
            (int(s.split("pid ")[1].rstrip(")")) for s in feedback.info if s.startswith("vitp-geo started")),
            None,
        )
        report.update(
            progress=feedback.progress,
            texts=feedback.texts,
            info=feedback.info,
            errors=feedback.errors,
            commands=feedback.commands,
            canceled=feedback.isCanceled(),
            pid=pid,
            pid_alive=pid is not None and os.path.exists(f"/proc/{pid}"),
        )
        reports.append(report)
    print(json.dumps(reports))
    sys.stdout.flush()
    os._exit(0)  # QGIS may crash while tearing down a headless application: the report is out


if __name__ == "__main__":
    main(sys.argv[1])
