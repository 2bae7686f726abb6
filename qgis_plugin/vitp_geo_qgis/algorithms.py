"""The ``vitp`` algorithms: each builds a ``vitp-geo infer`` command line and runs it (``runner``)."""

import os

from qgis.core import (
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorDestination,
    QgsProviderRegistry,
)
from qgis.PyQt.QtGui import QIcon

from . import settings
from .runner import ExecutableNotFound, find_executable, run_vitp

ICON = os.path.join(os.path.dirname(__file__), "icon.svg")

# Help texts are plain text: qgis_process prints them as they are, the toolbox breaks the lines.
HELP_SETUP = (
    "Runs the vitp-geo command of the environment set in Processing > Options > Providers > "
    "vitp-geo > vitp-geo executable (empty: vitp-geo on PATH) as a subprocess; the model never runs "
    "in QGIS's own Python. Layers are read from their files: a layer without a local file (WMS, XYZ, "
    "a memory or database layer) must be exported to a GeoTIFF first."
)
HELP_CANCEL = (
    "Cancel asks vitp-geo to stop at the next row of windows and save its state; run the algorithm "
    "again with the same parameters and output files and Resume ticked to continue it (--resume): "
    "the result is the same, bit for bit, as an uninterrupted run. A run whose outputs are "
    "temporary files cannot be resumed: give output files."
)


def _flags_table(rows):
    lines = "\n".join(f"  {name}: {flag}" for name, flag in rows)
    return f"Parameters and the vitp-geo infer flags they map to (always added: --progress jsonl --overwrite):\n{lines}"


class _VitpAlgorithm(QgsProcessingAlgorithm):
    """What the three algorithms share: layer files, the command, the run, the log."""

    FLAGS = ()  # (parameter, flag) rows for the help text

    def createInstance(self):
        return type(self)()

    def group(self):
        return "Inference"

    def groupId(self):
        return "inference"

    def icon(self):
        return QIcon(ICON)

    def shortHelpString(self):
        return "\n\n".join((self.HELP, _flags_table(self.FLAGS), HELP_SETUP, self.HELP_EXTRA))

    HELP = ""
    HELP_EXTRA = ""

    # --- parameters -----------------------------------------------------------------------
    def _add_checkpoint(self, description):
        self.addParameter(
            QgsProcessingParameterFile(
                "CHECKPOINT",
                description,
                behavior=QgsProcessingParameterFile.File,
                fileFilter="vitp-geo checkpoints (*.ckpt);;All files (*.*)",
            )
        )

    def _add_tiling(self):
        self.addParameter(
            QgsProcessingParameterNumber(
                "TILE_SIZE",
                "Tile size in pixels (0: the checkpoint's)",
                type=QgsProcessingParameterNumber.Integer,
                defaultValue=0,
                minValue=0,
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                "OVERLAP",
                "Overlap between neighbouring windows (fraction of a window)",
                type=QgsProcessingParameterNumber.Double,
                defaultValue=0.25,
                minValue=0.0,
                maxValue=0.95,
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                "BATCH_SIZE",
                "Windows per model call",
                type=QgsProcessingParameterNumber.Integer,
                defaultValue=8,
                minValue=1,
            )
        )
        self.addParameter(
            QgsProcessingParameterString(
                "BANDS", "Bands to read, 1-based, e.g. 1,2,3 (empty: the checkpoint's)", optional=True
            )
        )

    def _add_resume(self):
        self.addParameter(
            QgsProcessingParameterBoolean(
                "RESUME", "Resume an interrupted run (same parameters and outputs)", defaultValue=False
            )
        )

    @staticmethod
    def _file_only(param):
        param.setSupportsNonFileBasedOutput(False)  # a temporary output is a file too, never memory:
        return param

    # --- helpers ----------------------------------------------------------------------------
    def _layer_file(self, parameters, name, context, feedback):
        layer = self.parameterAsRasterLayer(parameters, name, context)
        if layer is None:
            _fail(feedback, f"{name}: no raster layer given")
        provider = layer.providerType()
        path = ""
        if provider == "gdal":
            path = QgsProviderRegistry.instance().decodeUri("gdal", layer.source()).get("path") or ""
        if not path or not os.path.isfile(path):
            _fail(
                feedback,
                f"{name}: the layer '{layer.name()}' has no local file (provider '{provider}'); "
                "export it first (right-click > Export > Save As... GeoTIFF) and run on that file",
            )
        return path

    def _common_args(self, parameters, context):
        args = []
        tile = self.parameterAsInt(parameters, "TILE_SIZE", context)
        if tile:
            args += ["--tile-size", str(tile)]
        args += ["--overlap", repr(self.parameterAsDouble(parameters, "OVERLAP", context))]
        args += ["--batch-size", str(self.parameterAsInt(parameters, "BATCH_SIZE", context))]
        bands = (self.parameterAsString(parameters, "BANDS", context) or "").strip()
        if bands:
            args += ["--bands", bands]
        return args

    @staticmethod
    def _optional_output(value):
        return value if value and not value.startswith("memory:") else None

    @staticmethod
    def _refuse_same(inputs, outputs, feedback):
        for out_label, out in outputs.items():
            if not out:
                continue
            for in_label, src in inputs.items():
                if src and os.path.realpath(out) == os.path.realpath(src):
                    _fail(
                        feedback,
                        f"{out_label} {out} is the input {in_label}: refusing to overwrite an input "
                        "(choose another output file)",
                    )

    def _run(self, argv_tail, feedback, resumable_kind):
        """Run ``vitp-geo infer <argv_tail>`` and raise QgsProcessingException when it fails."""
        try:
            exe = find_executable(settings.executable())
        except ExecutableNotFound as err:
            _fail(feedback, str(err))
        argv = [exe, "infer", *argv_tail, "--progress", "jsonl", "--overwrite"]
        debug = settings.debug()
        if debug:
            argv.append("--debug")
        feedback.pushCommandInfo(" ".join(_quote(a) for a in argv))

        def on_output(line):
            if debug:
                feedback.pushDebugInfo(line)
            elif ": error:" not in line:
                feedback.pushConsoleInfo(line)

        result = run_vitp(
            argv,
            is_canceled=feedback.isCanceled,
            on_progress=feedback.setProgress,
            on_phase=feedback.setProgressText,
            on_output=on_output,
            on_started=lambda pid: feedback.pushInfo(f"vitp-geo started (pid {pid})"),
            stop_grace_s=settings.stop_grace_s(),
        )
        if result.canceled:
            if result.resumable:
                msg = (
                    f"Canceled; the run can be resumed: run it again with the same parameters and output "
                    f"files and Resume ticked (its state is in {result.state})"
                )
            elif resumable_kind:
                msg = "Canceled before vitp-geo could save its state; the next run starts over"
            else:
                msg = "Canceled; detection runs are not resumable, the next run starts over"
            _fail(feedback, msg)
        if result.returncode != 0:
            _fail(feedback, result.error)


def _fail(feedback, message):
    """Log ``message`` (one line) as the algorithm's error and fail the algorithm with it."""
    feedback.reportError(message, fatalError=True)
    raise QgsProcessingException(message)


def _quote(arg):
    return arg if arg and all(c.isalnum() or c in "-_./=:,+" for c in arg) else repr(arg)


class SegmentScene(_VitpAlgorithm):
    FLAGS = (
        ("INPUT", "SCENE (positional)"),
        ("CHECKPOINT", "--checkpoint"),
        ("TILE_SIZE", "--tile-size (0: left out, the checkpoint's)"),
        ("OVERLAP", "--overlap"),
        ("BATCH_SIZE", "--batch-size"),
        ("BANDS", "--bands"),
        ("MIN_AREA", "--min-area"),
        ("RESUME", "--resume"),
        ("OUTPUT", "--out"),
        ("PROBABILITIES", "--probabilities"),
        ("OUTPUT_VECTOR", "--vector"),
    )
    HELP = (
        "Segments a whole raster scene with a segmentation checkpoint written by "
        "vitp-geo finetune segmentation: vitp-geo infer SCENE --checkpoint "
        "CKPT --out CLASSES.tif. Writes a Cloud-Optimized GeoTIFF class map with its colour "
        "table and QGIS style, optionally per-class probabilities and a styled GeoPackage of "
        "polygons."
    )
    HELP_EXTRA = HELP_CANCEL

    def name(self):
        return "segment_scene"

    def displayName(self):
        return "Segment scene"

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", "Input raster"))
        self._add_checkpoint("Checkpoint (vitp-geo finetune segmentation)")
        self._add_tiling()
        self.addParameter(
            QgsProcessingParameterNumber(
                "MIN_AREA",
                "Smallest polygon kept, in pixels",
                type=QgsProcessingParameterNumber.Integer,
                defaultValue=0,
                minValue=0,
            )
        )
        self._add_resume()
        self.addParameter(QgsProcessingParameterRasterDestination("OUTPUT", "Class map"))
        self.addParameter(
            self._file_only(
                QgsProcessingParameterRasterDestination(
                    "PROBABILITIES", "Class probabilities", optional=True, createByDefault=False
                )
            )
        )
        self.addParameter(
            self._file_only(
                QgsProcessingParameterVectorDestination(
                    "OUTPUT_VECTOR",
                    "Polygons",
                    type=QgsProcessing.TypeVectorPolygon,
                    optional=True,
                    createByDefault=False,
                )
            )
        )

    def processAlgorithm(self, parameters, context, feedback):
        scene = self._layer_file(parameters, "INPUT", context, feedback)
        ckpt = self.parameterAsFile(parameters, "CHECKPOINT", context)
        out = self.parameterAsOutputLayer(parameters, "OUTPUT", context)
        probs = self._optional_output(self.parameterAsOutputLayer(parameters, "PROBABILITIES", context))
        vector = self._optional_output(self.parameterAsOutputLayer(parameters, "OUTPUT_VECTOR", context))
        self._refuse_same(
            {"INPUT": scene, "CHECKPOINT": ckpt},
            {"OUTPUT": out, "PROBABILITIES": probs, "OUTPUT_VECTOR": vector},
            feedback,
        )
        args = [scene, "--checkpoint", ckpt, "--out", out, *self._common_args(parameters, context)]
        args += ["--min-area", str(self.parameterAsInt(parameters, "MIN_AREA", context))]
        if probs:
            args += ["--probabilities", probs]
        if vector:
            args += ["--vector", vector]
        if self.parameterAsBoolean(parameters, "RESUME", context):
            args.append("--resume")
        self._run(args, feedback, resumable_kind=True)
        return {"OUTPUT": out, "PROBABILITIES": probs, "OUTPUT_VECTOR": vector}


class DetectChanges(_VitpAlgorithm):
    FLAGS = (
        ("INPUT", "SCENE (positional)"),
        ("INPUT_AFTER", "--after"),
        ("CHECKPOINT", "--checkpoint"),
        ("TILE_SIZE", "--tile-size (0: left out, the checkpoint's)"),
        ("OVERLAP", "--overlap"),
        ("BATCH_SIZE", "--batch-size"),
        ("BANDS", "--bands"),
        ("RESUME", "--resume"),
        ("OUTPUT", "--out"),
        ("OUTPUT_VECTOR", "--vector"),
    )
    HELP = (
        "Maps changes between two co-registered rasters of the same grid with a change checkpoint "
        "written by vitp-geo finetune change: vitp-geo infer BEFORE --after AFTER "
        "--checkpoint CKPT --out CHANGE.tif. Writes a styled change map and optionally a "
        "styled GeoPackage of change polygons."
    )
    HELP_EXTRA = HELP_CANCEL

    def name(self):
        return "detect_changes"

    def displayName(self):
        return "Detect changes"

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", "Before raster"))
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT_AFTER", "After raster"))
        self._add_checkpoint("Checkpoint (vitp-geo finetune change)")
        self._add_tiling()
        self._add_resume()
        self.addParameter(QgsProcessingParameterRasterDestination("OUTPUT", "Change map"))
        self.addParameter(
            self._file_only(
                QgsProcessingParameterVectorDestination(
                    "OUTPUT_VECTOR",
                    "Change polygons",
                    type=QgsProcessing.TypeVectorPolygon,
                    optional=True,
                    createByDefault=False,
                )
            )
        )

    def processAlgorithm(self, parameters, context, feedback):
        before = self._layer_file(parameters, "INPUT", context, feedback)
        after = self._layer_file(parameters, "INPUT_AFTER", context, feedback)
        ckpt = self.parameterAsFile(parameters, "CHECKPOINT", context)
        out = self.parameterAsOutputLayer(parameters, "OUTPUT", context)
        vector = self._optional_output(self.parameterAsOutputLayer(parameters, "OUTPUT_VECTOR", context))
        self._refuse_same(
            {"INPUT": before, "INPUT_AFTER": after, "CHECKPOINT": ckpt},
            {"OUTPUT": out, "OUTPUT_VECTOR": vector},
            feedback,
        )
        args = [before, "--after", after, "--checkpoint", ckpt, "--out", out]
        args += self._common_args(parameters, context)
        if vector:
            args += ["--vector", vector]
        if self.parameterAsBoolean(parameters, "RESUME", context):
            args.append("--resume")
        self._run(args, feedback, resumable_kind=True)
        return {"OUTPUT": out, "OUTPUT_VECTOR": vector}


class DetectObjects(_VitpAlgorithm):
    FLAGS = (
        ("INPUT", "SCENE (positional)"),
        ("CHECKPOINT", "--checkpoint"),
        ("MIN_SCORE", "--min-score"),
        ("TILE_SIZE", "--tile-size (0: left out, the checkpoint's)"),
        ("OVERLAP", "--overlap"),
        ("BATCH_SIZE", "--batch-size"),
        ("BANDS", "--bands"),
        ("OUTPUT", "--vector"),
    )
    HELP = (
        "Detects objects over a whole raster scene with a detection checkpoint written by "
        "vitp-geo finetune detection: vitp-geo infer SCENE --checkpoint CKPT "
        "--vector BOXES.gpkg. Boxes are merged across windows in map coordinates and written "
        "as a styled GeoPackage of (oriented) polygons with class, score and area."
    )
    HELP_EXTRA = "Cancel stops the run; detection runs are not resumable."

    def name(self):
        return "detect_objects"

    def displayName(self):
        return "Detect objects"

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", "Input raster"))
        self._add_checkpoint("Checkpoint (vitp-geo finetune detection)")
        self.addParameter(
            QgsProcessingParameterNumber(
                "MIN_SCORE",
                "Minimum score",
                type=QgsProcessingParameterNumber.Double,
                defaultValue=0.3,
                minValue=0.0,
                maxValue=1.0,
            )
        )
        self._add_tiling()
        self.addParameter(
            self._file_only(
                QgsProcessingParameterVectorDestination(
                    "OUTPUT", "Detections", type=QgsProcessing.TypeVectorPolygon
                )
            )
        )

    def processAlgorithm(self, parameters, context, feedback):
        scene = self._layer_file(parameters, "INPUT", context, feedback)
        ckpt = self.parameterAsFile(parameters, "CHECKPOINT", context)
        out = self.parameterAsOutputLayer(parameters, "OUTPUT", context)
        self._refuse_same({"INPUT": scene, "CHECKPOINT": ckpt}, {"OUTPUT": out}, feedback)
        args = [scene, "--checkpoint", ckpt, "--vector", out]
        args += ["--min-score", repr(self.parameterAsDouble(parameters, "MIN_SCORE", context))]
        args += self._common_args(parameters, context)
        self._run(args, feedback, resumable_kind=False)
        return {"OUTPUT": out}
