"""The `ferops` command line: the user-facing tools around the DVC pipeline.

The pipeline itself runs with `dvc repro`; this command is for looking at and using what it
produces.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ferops import __version__
from ferops.errors import FeropsError
from ferops.io import load_arrays
from ferops.runtime import configure_logging

logger = logging.getLogger("ferops.cli")

_EPILOG = """\
The pipeline runs with DVC, not with this command:
  dvc repro                      download -> validate -> prepare -> oversample -> train
                                 -> evaluate -> register (see dvc.yaml)
  dvc exp run -S train.lr=1e-4   an experiment with one parameter changed
  dvc metrics show               counts and figures from reports/*.json
Then: ferops promote --dry-run   compare the new model (challenger) with the champion
Use it: ferops predict photo.jpg, ferops serve, ferops export --format onnx
Watch it: ferops monitor --since 24h (drift of what the server received; exit 3 on alarm)
"""

# Exit status of `ferops promote` when the gate refuses the candidate (1 is an error).
EXIT_REFUSED = 3


def describe_arrays(arrays: dict[str, np.ndarray]) -> list[str]:
    """Describe a prepared-data file: every array's shape and dtype, and class counts.

    Args:
        arrays: Arrays as loaded by :func:`ferops.io.load_arrays`.

    Returns:
        Lines of text.
    """
    lines = [f"{name:<28} {str(value.shape):<18} {value.dtype}" for name, value in sorted(arrays.items())]
    if "label" in arrays:
        label = arrays["label"]
        classes = arrays["classes"].tolist() if "classes" in arrays else []
        counts = np.bincount(label[label >= 0], minlength=len(classes))
        lines.append(f"{len(label):,} images; per class:")
        for index, count in enumerate(counts):
            name = classes[index] if index < len(classes) else f"class {index}"
            lines.append(f"  {name:<10} {count:>7,}")
        if (label < 0).any():
            lines.append(f"  {'(no label)':<10} {int((label < 0).sum()):>7,}")
    return lines


def _inspect(args: argparse.Namespace) -> None:
    arrays = load_arrays(args.path)
    sys.stdout.write("\n".join([str(args.path), *describe_arrays(arrays)]) + "\n")
    if args.gallery:
        from ferops.figures import image_grid

        if "images" not in arrays or "label" not in arrays:
            raise FeropsError(f"{args.path}: has no 'images' and 'label' arrays to draw")
        from ferops.evaluation_reports import sample_per_class

        label = arrays["label"]
        classes = arrays["classes"].tolist() if "classes" in arrays else []
        # Unlabelled rows (label -1) are not drawn.
        labelled = np.flatnonzero(label >= 0)
        rows = labelled[sample_per_class(label[labelled], args.per_class, args.seed)]
        names = [classes[label[row]] if label[row] < len(classes) else str(label[row]) for row in rows]
        titles = [f"{name} #{row}" for name, row in zip(names, rows, strict=True)]
        image_grid(arrays["images"][rows], titles, args.gallery, columns=args.per_class,
                   title=f"{Path(args.path).name}: {args.per_class} random images per class")


def _promote(args: argparse.Namespace) -> int:
    from ferops.config import BaseConfig
    from ferops.inference import require_store
    from ferops.registry import Gate, RegistryConfig, promote
    from ferops.runtime import read_configs

    configs = read_configs(args.params, base=BaseConfig, registry=RegistryConfig, promote=Gate)
    uri = _store_uri(args.tracking_uri, Path(args.params).resolve().parent)
    # Promoting reads (and may write to) an existing store; it never creates one.
    require_store(uri)
    name = args.name or configs["registry"].name
    result = promote(uri, name, configs["promote"], list(configs["base"].classes),
                     candidate_alias=args.candidate or configs["registry"].alias,
                     version=args.version, dry_run=args.dry_run, force=args.force, reason=args.reason)
    lines = [f"{name}: candidate version {result.candidate}, champion "
             f"{'version ' + str(result.champion) if result.champion else '(none yet)'}"]
    if result.table:
        lines += ["", result.table, ""]
    verdict = {"promoted": f"PROMOTED: version {result.candidate} is now @champion",
               "refused": "REFUSED: champion unchanged",
               "unchanged": "UNCHANGED",
               "dry-run": "DRY RUN: nothing changed; the gate would "
                          + ("promote" if result.decision.passed else "refuse")}[result.action]
    if result.action == "promoted" and not result.decision.passed:
        verdict = (f"FORCED: version {result.candidate} is now @champion although the gate refused; "
                   f"reason recorded: {args.reason}")
    lines.append(f"{verdict} ({result.decision.summary})")
    if result.action == "refused":
        lines.append("To override: ferops promote --force --reason \"why\" (recorded on the version).")
    sys.stdout.write("\n".join(lines) + "\n")
    return EXIT_REFUSED if not result.decision.passed and result.action != "promoted" else 0


# Exit status of `ferops predict` when some inputs could not be read (the others were processed).
EXIT_SOME_FAILED = 4


def _store_uri(flag: str | None, start: Path) -> str:
    """The MLflow store: ``--tracking-uri``, else MLFLOW_TRACKING_URI, else the project's mlflow.db."""
    from ferops.tracking import find_project_root, tracking_uri

    if flag:
        return flag
    from ferops.runtime import nearest_folder_with

    # The project root is the nearest folder up with params.yaml (the command may run in a subfolder).
    root = nearest_folder_with(start, "params.yaml") or start.resolve()
    return tracking_uri(os.environ.get("MLFLOW_TRACKING_URI"), find_project_root(root))


def _model_tracking_uri(args: argparse.Namespace) -> str | None:
    """The MLflow store for models:/ and runs:/ references (None for a file)."""
    if not str(args.model).startswith(("models:/", "runs:/")):
        return None
    return _store_uri(args.tracking_uri, Path.cwd())


def _predictor(args: argparse.Namespace, keep_crops: bool = False):  # -> ferops.predictor.Predictor
    from ferops.faces import FaceDetector
    from ferops.inference import load_classifier
    from ferops.predictor import Predictor

    if args.max_faces is not None and args.max_faces < 1:
        raise FeropsError(f"--max-faces must be >= 1, got {args.max_faces}")
    if args.detector_model is not None and not args.detector_model.is_file():
        raise FeropsError(f"--detector-model {args.detector_model}: no such file")
    detector = FaceDetector(args.detector, model=args.detector_model, min_size=args.min_face,
                            score_threshold=args.detector_threshold, tiles=args.tiles)
    classifier = load_classifier(args.model, tracking_uri=_model_tracking_uri(args),
                                 batch_size=args.batch_size, tta=args.tta)
    return Predictor(classifier, detector, max_faces=args.max_faces, align=args.align, keep_crops=keep_crops)


def _predict(args: argparse.Namespace) -> int:
    from ferops.media import check_max_pixels
    from ferops.output import write_results
    from ferops.predict import predict_camera, run_inputs

    if not args.inputs and args.camera is None:
        raise FeropsError("nothing to do: give image/video files or folders, or --camera INDEX")
    if args.every < 1:
        raise FeropsError(f"--every must be >= 1, got {args.every}")
    max_pixels = check_max_pixels(args.max_pixels)
    fmt = args.format or ("csv" if args.output and args.output.suffix.lower() == ".csv" else "json")
    predictor = _predictor(args, keep_crops=args.store_faces)
    prediction_log = _prediction_log(args, args.log)  # opened first: a bad --log-uri fails before the work
    try:
        results = run_inputs(args.inputs, predictor, annotate_dir=args.annotate, every=args.every,
                             max_frames=args.max_frames, progress=not args.no_progress, max_pixels=max_pixels)
        if args.camera is not None:
            target = args.annotate / f"camera{args.camera}.mp4" if args.annotate else None
            results.append(predict_camera(args.camera, predictor, headless=args.headless, annotate_to=target,
                                          max_frames=args.max_frames))
        write_results(results, predictor, args.output, fmt)
        if prediction_log is not None:
            from ferops.monitoring import resolve_model

            model = resolve_model(str(args.model), _model_tracking_uri(args))
            _log_results(prediction_log, results, predictor, model)
    finally:
        if prediction_log is not None:
            prediction_log.close()
            stats = prediction_log.stats()
            logger.info("prediction log %s: %d face(s) logged, %d failed", stats["uri"], stats["logged"],
                        stats["failed"] + stats["dropped"])
    failed = [result for result in results if result.error]
    faces = sum(len(result.faces) for result in results)
    logger.info("%d input(s), %d face(s), %d failed", len(results), faces, len(failed))
    if failed:
        logger.error("%d of %d input(s) failed: %s", len(failed), len(results),
                     "; ".join(result.error for result in failed[:5]) + (" ..." if len(failed) > 5 else ""))
        return EXIT_SOME_FAILED
    return 0


def _log_results(prediction_log, results, predictor, model: tuple[str, str | None]) -> None:
    """Queue a log record for every face ``ferops predict`` classified."""
    import uuid

    from ferops.prediction_log import LogRecord

    for result in results:
        request = str(uuid.uuid4())  # one input (a photo, a video) is one request
        prediction_log.submit(
            LogRecord.for_face(face, source=f"{result.source}#{face.frame}" if face.frame is not None
                               else result.source, model=model, detector=predictor.detector.backend,
                               size=(result.width, result.height), request=request,
                               store_crop=prediction_log.store_faces)
            for face in result.faces)


def _serve(args: argparse.Namespace) -> int:
    from ferops.media import check_max_pixels
    from ferops.serve import serve

    if args.max_upload_mb <= 0:
        raise FeropsError(f"--max-upload-mb must be > 0, got {args.max_upload_mb}")
    max_pixels = check_max_pixels(args.max_pixels)
    from ferops.monitoring import resolve_model

    predictor = _predictor(args, keep_crops=True)
    prediction_log = _prediction_log(args, args.log)
    model = resolve_model(str(args.model), _model_tracking_uri(args)) if prediction_log else None
    serve(predictor, host=args.host, port=args.port, max_upload_bytes=int(args.max_upload_mb * 2**20),
          max_pixels=max_pixels, prediction_log=prediction_log, model=model)
    return 0


# Exit status of `ferops monitor` when the window drifts past the thresholds (1 is an error).
EXIT_DRIFT = 3


def _parse_since(text: str):  # -> datetime
    """``--since``: an ISO date/time (UTC unless it says otherwise) or an age such as 30m, 24h, 7d."""
    import re
    from datetime import UTC, datetime, timedelta

    match = re.fullmatch(r"(\d+(?:\.\d+)?)([mhd])", text.strip())
    if match:
        unit = {"m": "minutes", "h": "hours", "d": "days"}[match.group(2)]
        return datetime.now(UTC) - timedelta(**{unit: float(match.group(1))})
    try:
        when = datetime.fromisoformat(text)
    except ValueError as error:
        raise FeropsError(f"--since {text!r}: expected an ISO date/time (2026-12-08T09:00) or an age "
                          "(30m, 24h, 7d)") from error
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _monitor(args: argparse.Namespace) -> int:
    import json

    from ferops.config import BaseConfig
    from ferops.io import atomic_directory, write_json
    from ferops.monitoring import MonitorConfig, compare, load_window, log_monitoring_run, reference_for
    from ferops.prediction_log import default_log_uri, redact
    from ferops.runtime import read_configs
    from ferops.tracking import MlflowConfig

    if args.last is not None and args.last < 1:
        raise FeropsError(f"--last must be >= 1, got {args.last}")
    root = Path(args.params).resolve().parent
    configs = read_configs(args.params, base=BaseConfig, monitor=MonitorConfig, mlflow=MlflowConfig)
    log_uri = args.log_uri or default_log_uri(root)
    since = _parse_since(args.since) if args.since else None
    until = _parse_since(args.until) if args.until else None
    tracking = _store_uri(args.tracking_uri, root)
    window = load_window(log_uri, since=since, until=until, last=args.last)
    reference, model = reference_for(window, args.reference or root / "reports/monitor/reference.parquet",
                                     tracking, explicit=args.reference is not None)
    current = window[window["model_run"] == model["run_id"]] if model.get("run_id") else window
    result = compare(reference, current, configs["monitor"], list(configs["base"].classes))
    summary = {**result.summary, "log": redact(log_uri), "model": model,
               "window": {"since": since.isoformat() if since else None,
                          "until": until.isoformat() if until else None, "last": args.last,
                          "first": str(current["time"].min()), "end": str(current["time"].max())}}
    with atomic_directory(args.out) as folder:
        (folder / "report.html").write_text(result.html, encoding="utf-8")
        write_json(folder / "summary.json", summary)
        if not args.no_mlflow:
            summary["mlflow_run_id"] = log_monitoring_run(
                tracking, f"{configs['mlflow'].experiment}-monitoring", summary, folder, model,
                {"log": redact(log_uri), "since": args.since, "until": args.until, "last": args.last,
                 "faces": len(current)})
            write_json(folder / "summary.json", summary)
    lines = [f"{len(current)} face(s) of {model.get('reference') or model.get('run_id') or 'the model'} "
             f"from {summary['window']['first']} to {summary['window']['end']}, against "
             f"{len(reference)} reference faces (PublicTest)"]
    for column, drift in summary["columns"].items():
        lines.append(f"  {column:<11} {drift['method']:<32} {drift['score']:>10.4g} "
                     f"{'DRIFT' if drift['drifted'] else 'ok'}")
    low = summary["low_confidence"]
    lines.append(f"  confidence < {low['threshold']}: {low['current']:.0%} of the faces "
                 f"(reference {low['reference']:.0%})")
    lines.append(f"report: {Path(args.out) / 'report.html'}, summary: {Path(args.out) / 'summary.json'}"
                 + (f", MLflow run {summary['mlflow_run_id']}" if "mlflow_run_id" in summary else ""))
    lines += [f"ALARM: {alarm}" for alarm in summary["alarms"]] or ["no drift past the thresholds"]
    sys.stdout.write("\n".join(lines) + "\n")
    if args.json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    return EXIT_DRIFT if summary["alarms"] else 0


def _export(args: argparse.Namespace) -> int:
    from ferops.export import ExportError, export_onnx, parity
    from ferops.inference import KerasClassifier, load_classifier

    classifier = load_classifier(args.model, tracking_uri=_model_tracking_uri(args), tta=args.tta)
    if not isinstance(classifier, KerasClassifier):
        raise ExportError(f"{args.model}: already an ONNX model; --model must be a Keras model "
                          "(.keras file, MLflow model or registry reference)")
    # The names go into the ONNX file only when the model carried them (not the assumed FER2013 order).
    output = export_onnx(classifier.model, args.output, opset=args.opset,
                         classes=None if classifier.classes_assumed else classifier.classes,
                         tta=args.tta)
    if args.verify:
        # Random pixels exercise every layer; the parity on real faces is checked by the tests.
        pixels = np.random.default_rng(0).uniform(0, 255, (32, 48, 48, 1)).astype(np.float32)
        difference = parity(classifier.model, output, pixels)
        if difference > args.tolerance:
            output.unlink(missing_ok=True)
            raise ExportError(f"{output}: ONNX Runtime and Keras disagree by {difference:.2e} "
                              f"(> --tolerance {args.tolerance:g}); the file was removed")
        logger.info("verified: ONNX Runtime matches Keras within %.1e (max abs difference)", difference)
    sys.stdout.write(f"{output}\n")
    return 0


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    from ferops.inference import DEFAULT_MODEL

    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"models:/NAME@ALIAS, models:/NAME/VERSION, models:/m-ID, runs:/RUN_ID/PATH, "
                             f"an MLflow model folder, or a .keras or .onnx file (default {DEFAULT_MODEL}; "
                             ".onnx runs on ONNX Runtime)")
    parser.add_argument("--tracking-uri",
                        help="MLflow tracking/registry URI for models:/ and runs:/ (default: "
                             "MLFLOW_TRACKING_URI, else sqlite mlflow.db at the repository root)")
    parser.add_argument("--no-tta", dest="tta", action="store_const", const="none", default="flip",
                        help="no test-time augmentation. By default each face is also classified "
                             "mirrored and the two probability vectors are averaged (flip TTA, the "
                             "one PublicTest favoured; about twice the model time per face)")


def _add_detector_arguments(parser: argparse.ArgumentParser) -> None:
    from ferops.detector_model import YUNET_FILE, cache_dir
    from ferops.faces import DEFAULT_SCORE_THRESHOLD, DETECT_SIZE

    parser.add_argument("--detector", choices=("yunet", "haar"), default="yunet",
                        help=f"face detector: yunet (default; OpenCV's FaceDetectorYN, run on a copy of "
                             f"the photo scaled to at most {DETECT_SIZE} px) or haar (OpenCV's 2001 "
                             "frontal-face cascade, kept for comparison: more false faces, slower)")
    parser.add_argument("--detector-model", metavar="FILE", type=Path,
                        help=f"the detector's model file: a YuNet .onnx or a Haar .xml (default: "
                             f"{YUNET_FILE} from the checkout's data/raw/ or {cache_dir()}/, fetched "
                             "there once and checked by sha256; OpenCV's bundled cascade for haar)")
    parser.add_argument("--detector-threshold", type=float, default=DEFAULT_SCORE_THRESHOLD, metavar="P",
                        help=f"YuNet's minimum face score, 0..1 (default {DEFAULT_SCORE_THRESHOLD})")
    parser.add_argument("--tiles", action="store_true",
                        help="YuNet: also search overlapping tiles at twice the resolution, for small "
                             "faces in large group photos (slower)")
    parser.add_argument("--no-align", dest="align", action="store_false",
                        help="crop YuNet faces by their box instead of aligning them by the eyes")
    parser.add_argument("--min-face", type=int, default=30, metavar="PX",
                        help="smallest face side to detect, in pixels (default 30)")
    parser.add_argument("--max-faces", type=int, metavar="N", help="keep only the N largest faces per image")
    parser.add_argument("--batch-size", type=int, default=64, help="faces per model call (default 64)")


def _add_log_arguments(parser: argparse.ArgumentParser) -> None:
    from ferops.prediction_log import LOG_URI_ENV

    parser.add_argument("--log-uri", metavar="URL",
                        help=f"the prediction log's database, a SQLAlchemy URL: sqlite:///path.db or "
                             f"postgresql+psycopg2://user:password@host/db (default: {LOG_URI_ENV}, else "
                             "sqlite:///predictions.db at the repository root)")
    parser.add_argument("--store-faces", action="store_true",
                        help="also store each face's 48x48 crop in the log. Off by default: faces are "
                             "personal data")


def _prediction_log(args: argparse.Namespace, enabled: bool):  # -> ferops.prediction_log.PredictionLog | None
    from ferops.prediction_log import PredictionLog, default_log_uri

    if not enabled:
        if args.store_faces or args.log_uri:
            raise FeropsError("--log-uri and --store-faces need the prediction log (drop --no-log; for "
                              "predict, add --log)")
        return None
    try:
        return PredictionLog(args.log_uri or default_log_uri(), store_faces=args.store_faces)
    except ValueError as error:
        raise FeropsError(str(error)) from error


def _add_max_pixels_argument(parser: argparse.ArgumentParser, refused: str) -> None:
    from ferops.media import DEFAULT_MAX_PIXELS

    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, metavar="N",
                        help=f"largest image (width x height) accepted, read from the image header before "
                             f"decoding; larger images {refused} (default {DEFAULT_MAX_PIXELS:,}, "
                             f"{DEFAULT_MAX_PIXELS / 1e6:g} megapixels)")


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of the `ferops` command."""
    parser = argparse.ArgumentParser(
        prog="ferops",
        description="Facial expression recognition: tools around the ferops DVC pipeline.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ferops {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    inspect = commands.add_parser(
        "inspect", help="describe a prepared .npz file (arrays, class counts), optionally draw samples",
        description="Describe an array file written by the pipeline, e.g. data/prepared/train.npz: "
        "every array's shape and dtype and the images per class. With --gallery, save a PNG of "
        "random images per class to look at.",
    )
    inspect.add_argument("path", type=Path, help="an .npz file from data/prepared or data/oversampled")
    inspect.add_argument("--gallery", type=Path, help="save a PNG of sample images here")
    inspect.add_argument("--per-class", type=int, default=8, help="images per class (default 8)")
    inspect.add_argument("--seed", type=int, default=0, help="random seed for the sample")
    inspect.set_defaults(handler=_inspect)

    promote = commands.add_parser(
        "promote", help="move the registry's @champion alias to a better model (gated)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Compare a candidate model version (default: the one the `register` stage\n"
        "aliased @challenger) with the current @champion side by side, and move @champion only\n"
        "if the candidate passes the gate in params.yaml (`promote:`):\n"
        "  - PrivateTest accuracy not lower (max_accuracy_drop),\n"
        "  - no class's PrivateTest recall lower by more than max_class_recall_drop points,\n"
        "  - CK+ and JAFFE accuracy not lower by more than max_cross_dataset_drop points;\n"
        "the very first champion needs min_accuracy. Every decision and its reason is printed\n"
        "and recorded as tags on the version.",
        epilog="exit status: 0 promoted or already champion (or a dry run the gate passes), "
        "3 refused by the gate, 1 error\n\n"
        "examples:\n"
        "  ferops promote --dry-run              what would happen, change nothing\n"
        "  ferops promote                        promote @challenger if it passes\n"
        "  ferops promote --version 3            promote (or roll back to) version 3, gated\n"
        "  ferops promote --version 3 --force --reason \"rollback: v4 misbehaves on webcam\"\n"
        "then load it anywhere with mlflow.pyfunc.load_model(\"models:/ferops-fer2013@champion\")",
    )
    promote.add_argument("--name", help="registered model (default: registry.name in params.yaml)")
    promote.add_argument("--candidate", metavar="ALIAS",
                         help="alias of the candidate version (default: registry.alias, `challenger`)")
    promote.add_argument("--version", help="candidate version number instead of an alias")
    promote.add_argument("--dry-run", action="store_true", help="show the comparison and decision only")
    promote.add_argument("--force", action="store_true", help="promote even if the gate refuses")
    promote.add_argument("--reason", help="why --force overrides the gate (required with --force)")
    promote.add_argument("--params", default="params.yaml", help="params file with the gate thresholds")
    promote.add_argument("--tracking-uri",
                         help="MLflow tracking/registry URI (default: MLFLOW_TRACKING_URI, else "
                              "sqlite mlflow.db at the repository root)")
    promote.set_defaults(handler=_promote)

    predict = commands.add_parser(
        "predict", help="find faces in photos, folders, videos or a webcam and classify their expressions",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Detect faces with OpenCV, crop them as in training and classify them in batches. "
        "Inputs are image files, folders (walked recursively; files with image or video suffixes), "
        "video files and, with --camera, a webcam. Results (per face: source, frame, box, expression, "
        "all class probabilities) go to stdout as JSON, or to --output as JSON or CSV; --annotate "
        "writes copies with boxes and labels drawn. Unreadable, empty and too large files (above "
        "--max-pixels) are reported and skipped.",
        epilog="exit status: 0 all inputs processed, 4 some inputs failed (the rest were processed), "
        "1 error\n\n"
        "examples:\n"
        "  ferops predict photo.jpg                          JSON to stdout, champion model\n"
        "  ferops predict photos/ -o faces.csv --annotate annotated/\n"
        "  ferops predict clip.mp4 --every 5 -o clip.json --annotate out/   (writes out/clip.mp4)\n"
        "  ferops predict --camera 0                         live window (q or Esc quits)\n"
        "  ferops predict --camera 0 --headless --max-frames 300 -o webcam.json\n"
        "  ferops predict photo.jpg --model models/model.keras\n"
        "  ferops predict photo.jpg --model model.onnx        ONNX Runtime\n"
        "  ferops predict photo.jpg --model models:/ferops-fer2013@challenger",
    )
    predict.add_argument("inputs", nargs="*", type=Path, metavar="INPUT",
                         help="image or video files, folders")
    predict.add_argument("--camera", type=int, metavar="INDEX", help="also read this webcam (0 = first)")
    predict.add_argument("-o", "--output", type=Path,
                         help="write results here (.json or .csv; default: JSON to stdout)")
    predict.add_argument("--format", choices=("json", "csv"), help="output format (default: from --output)")
    predict.add_argument("--annotate", type=Path, metavar="DIR",
                         help="write annotated images (and an MP4 per video) into this folder")
    predict.add_argument("--every", type=int, default=1, metavar="N",
                         help="videos: classify one frame in N (default every frame)")
    predict.add_argument("--max-frames", type=int, metavar="N", help="videos and webcam: stop after N frames")
    predict.add_argument("--headless", action="store_true",
                         help="webcam without a window (automatic when there is no display)")
    predict.add_argument("--no-progress", action="store_true", help="no progress bars")
    predict.add_argument("--log", action="store_true",
                         help="also append every face to the prediction log (see --log-uri), as serve does")
    _add_max_pixels_argument(predict, "(and videos with larger frames) are reported and skipped")
    _add_model_arguments(predict)
    _add_detector_arguments(predict)
    _add_log_arguments(predict)
    predict.set_defaults(handler=_predict)

    serve = commands.add_parser(
        "serve", help="run the HTTP service: POST /predict, POST /feedback, GET /health, GET /metrics and "
                      "a web page at /",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Load the model once and serve it over HTTP. POST /predict takes a multipart "
        "image upload (field 'file') and returns each face's box, expression and probabilities as "
        "JSON; GET /health says which model is loaded; GET /metrics counts requests, faces, latency "
        "and answers for Prometheus; GET / is a web page to try a photo or the webcam, where a user can "
        "correct a wrong answer (POST /feedback stores it with the face's crop). Every face is "
        "recorded in the prediction log (--log-uri; --no-log turns it off; crops only with "
        "--store-faces). Binds 127.0.0.1 (this machine only) unless --host says otherwise. Uploads "
        "above --max-upload-mb MiB or --max-pixels pixels get 413.",
        epilog="examples:\n"
        "  ferops serve                                       champion model on http://127.0.0.1:8000/\n"
        "  ferops serve --model model.onnx --port 8080\n"
        "  curl -F file=@photo.jpg http://127.0.0.1:8000/predict",
    )
    serve.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    serve.add_argument("--max-upload-mb", type=float, default=10.0,
                       help="largest accepted image in MiB; larger uploads get 413 (default 10)")
    serve.add_argument("--no-log", dest="log", action="store_false",
                       help="do not record the faces in the prediction log (recorded by default)")
    _add_max_pixels_argument(serve, "get 413")
    _add_model_arguments(serve)
    _add_detector_arguments(serve)
    _add_log_arguments(serve)
    serve.set_defaults(handler=_serve)

    monitor = commands.add_parser(
        "monitor", help="compare what the served model received with its reference: drift and health",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Read a window of the prediction log (what `ferops serve` and `ferops predict --log` "
        "recorded) and compare it with the model's reference, its answers and crop statistics on "
        "PublicTest (reports/monitor/reference.parquet, written by the evaluate stage; or the "
        "reference logged with the model's MLflow run). Evidently's drift tests per feature "
        "(brightness, contrast, sharpness, confidence) and for the predicted class, plus the share of "
        "low-confidence faces, judged by the `monitor:` section of params.yaml. Writes an HTML report "
        "and a JSON summary, and records a monitoring run in MLflow.",
        epilog="exit status: 0 no drift past the thresholds, 3 drift (for cron or CI alerts), 1 error\n\n"
        "examples:\n"
        "  ferops monitor --since 24h              the last day of the default log\n"
        "  ferops monitor --last 500 --log-uri postgresql+psycopg2://ferops:...@db/ferops\n"
        "  ferops monitor --since 2026-12-01 --out monitoring/december --no-mlflow",
    )
    monitor.add_argument("--since", metavar="WHEN",
                         help="only faces since this time: ISO date/time or an age (30m, 24h, 7d)")
    monitor.add_argument("--until", metavar="WHEN",
                         help="only faces before this time (same forms as --since)")
    monitor.add_argument("--last", type=int, metavar="N",
                         help="only the newest N faces (of those --since and --until leave)")
    monitor.add_argument("--log-uri", metavar="URL", help="the prediction log (default: FEROPS_LOG_URI, else "
                         "sqlite:///predictions.db at the repository root)")
    monitor.add_argument("--reference", type=Path, metavar="PARQUET",
                         help="the reference (default: reports/monitor/reference.parquet, or the one logged "
                              "with the window's model in MLflow)")
    monitor.add_argument("--out", type=Path, default=Path("monitoring/latest"),
                         help="folder for report.html and summary.json (default monitoring/latest)")
    monitor.add_argument("--params", default="params.yaml", help="params file with the `monitor:` thresholds")
    monitor.add_argument("--tracking-uri", help="MLflow store (default: MLFLOW_TRACKING_URI, else mlflow.db)")
    monitor.add_argument("--no-mlflow", action="store_true", help="do not record a monitoring run in MLflow")
    monitor.add_argument("--json", action="store_true", help="also print the JSON summary")
    monitor.set_defaults(handler=_monitor)

    export = commands.add_parser(
        "export", help="export the model to ONNX (for ONNX Runtime)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Convert a Keras model (the champion by default) to an ONNX file with a dynamic "
        "batch dimension (input 'pixels', float32 (n, 48, 48, 1) raw 0..255; output (n, 7) "
        "probabilities), then check that ONNX Runtime gives the same probabilities as Keras.",
        epilog="examples:\n"
        "  ferops export --format onnx -o model.onnx\n"
        "  ferops export --model models/model.keras -o models/model.onnx\n"
        "  ferops predict photo.jpg --model models/model.onnx",
    )
    export.add_argument("--format", choices=("onnx",), default="onnx", help="output format (onnx)")
    export.add_argument("-o", "--output", type=Path, default=Path("model.onnx"),
                        help="the file to write (default model.onnx)")
    export.add_argument("--opset", type=int, help="ONNX opset (default: the converter's)")
    export.add_argument("--no-verify", dest="verify", action="store_false",
                        help="skip the Keras vs ONNX Runtime comparison")
    export.add_argument("--tolerance", type=float, default=1e-4,
                        help="largest accepted probability difference when verifying (default 1e-4)")
    _add_model_arguments(export)
    export.set_defaults(handler=_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `ferops` command; return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    configure_logging(args.verbose)
    try:
        status = args.handler(args)
    except FeropsError as error:
        logger.error("%s", error)
        return 1
    return status or 0
