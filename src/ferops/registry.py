"""The MLflow model registry: register evaluated models, and promote them through a gate.

A model version carries its headline metrics as tags (``private_test.accuracy``,
``private_test.recall.<class>``, ``ckplus.accuracy``, ...), so the promotion gate compares
versions from the registry alone. Aliases decide what is live: the register stage points
``challenger`` at the newest version; ``ferops promote`` moves ``champion``.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import Field

from ferops.config import Section
from ferops.errors import FeropsError, ParamsError
from ferops.paired import PER_IMAGE_ARTIFACT, PairedDifference, paired_difference

logger = logging.getLogger(__name__)

CHAMPION = "champion"
MODEL_URI_TAG = "ferops.model_uri"
# Metrics the gate reads, and the cross-dataset ones among them.
HEADLINE = "private_test.accuracy"
CROSS_DATASET = {"ckplus.accuracy": "CK+ accuracy", "jaffe.accuracy": "JAFFE accuracy"}


class RegistryError(FeropsError):
    """A registered model, version or alias does not exist, or the registry refused a change."""


def version_tags(metrics: Mapping[str, Any], private_test_report: Mapping[str, Any],
                 run_tags: Mapping[str, str], data_md5: Mapping[str, str], model_uri: str) -> dict[str, str]:
    """Tags for a new model version: headline metrics, per-class recall, code and data provenance.

    Args:
        metrics: ``reports/metrics.json`` of the evaluate stage.
        private_test_report: The PrivateTest classification report (``plain`` of its details).
        run_tags: Tags of the MLflow run (``git.commit``, ``git.dirty``, ``dvc.exp_name``).
        data_md5: Input name to DVC md5 (from the train stage's report).
        model_uri: The logged model's URI (the key that makes registration idempotent).

    Returns:
        Tag name to string value.
    """
    tags = {MODEL_URI_TAG: model_uri,
            "labels": "original FER2013 labels; ferplus_test: the FER+ benchmark's labels, 8 classes"}
    for dataset in ("private_test", "private_test_clean", "public_test", "ckplus", "jaffe", "ferplus_test"):
        for measure in ("accuracy", "macro_f1"):
            value = metrics.get(dataset, {}).get(measure)
            if value is not None:
                tags[f"{dataset}.{measure}"] = repr(float(value))
    for klass, values in private_test_report["per_class"].items():
        if values["support"]:
            tags[f"private_test.recall.{klass}"] = repr(float(values["recall"]))
    for key in ("git.commit", "git.dirty", "dvc.exp_name"):
        if run_tags.get(key):
            tags[key] = run_tags[key]
    for name, digest in data_md5.items():
        tags[f"data.{name}.md5"] = digest
    return tags


def _client(tracking_uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _not_found(error: Exception) -> bool:
    code = str(getattr(error, "error_code", ""))
    return "RESOURCE_DOES_NOT_EXIST" in code or "not found" in str(error).lower()


def register(tracking_uri: str, name: str, model_uri: str, tags: Mapping[str, str],
             alias: str) -> tuple[Any, bool]:
    """Register ``model_uri`` as a version of ``name`` (once) and point ``alias`` at it.

    Registering the same logged model again (a forced rerun of the stage) returns the existing
    version instead of creating another.

    Returns:
        The model version and whether it was created now.
    """
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    try:
        client.get_registered_model(name)
    except MlflowException as error:
        if not _not_found(error):
            raise
        client.create_registered_model(name, description="ferops facial expression classifier "
                                                          "(48x48 grayscale, 7 FER2013 classes)")
        logger.info("created registered model %r", name)
    existing = [version for version in client.search_model_versions(f"name = '{name}'")
                if version.tags.get(MODEL_URI_TAG) == model_uri]
    if existing:
        version, created = existing[0], False
        logger.info("model %s is already version %s of %r: not registering it again", model_uri,
                    version.version, name)
    else:
        import mlflow

        # register_model resolves a logged model (models:/m-...) through the process-wide URIs.
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        version, created = mlflow.register_model(model_uri, name, tags=dict(tags)), True
        logger.info("registered %s as version %s of %r", model_uri, version.version, name)
    client.set_registered_model_alias(name, alias, str(version.version))
    logger.info("alias %r of %r -> version %s", alias, name, version.version)
    return version, created


class RegistryConfig(Section):
    """The ``registry`` params section.

    Attributes:
        name: The registered model that the register stage adds versions to.
        alias: The alias the register stage points at the newest version.
    """

    name: str = Field(min_length=1)
    alias: str = Field(min_length=1)


class Gate(Section):
    """Promotion thresholds in percentage points: the ``promote`` params section.

    Attributes:
        min_accuracy: The first champion's minimum PrivateTest accuracy.
        max_accuracy_drop: How far PrivateTest accuracy may drop.
        max_class_recall_drop: How far any class's PrivateTest recall may drop.
        max_cross_dataset_drop: How far CK+ and JAFFE accuracy may drop.
        confidence: Coverage of the paired difference's interval: a drop counts only when the
            whole interval lies beyond the allowed drop.
        resamples: Bootstrap resamples of the interval (people for CK+ and JAFFE, images for
            PrivateTest).
    """

    min_accuracy: float = Field(50.0, ge=0, le=100)
    max_accuracy_drop: float = Field(0.0, ge=0, le=100)
    max_class_recall_drop: float = Field(5.0, ge=0, le=100)
    max_cross_dataset_drop: float = Field(3.0, ge=0, le=100)
    confidence: float = Field(0.95, gt=0, lt=1)
    resamples: int = Field(10_000, ge=100, le=1_000_000)


@dataclass
class Decision:
    """The gate's verdict on a candidate, with the side-by-side rows it was based on."""

    passed: bool
    reasons: list[str]
    rows: list[tuple[str, str, str, str, str, str]] = field(default_factory=list)

    @property
    def summary(self) -> str:
        """One line: the verdict and why."""
        return ("passed: " if self.passed else "refused: ") + "; ".join(self.reasons)


def _metric(tags: Mapping[str, str], key: str, who: str) -> float:
    if key not in tags:
        raise RegistryError(f"{who} has no tag {key!r}; was it registered by the register stage?")
    return float(tags[key])


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def decide(candidate: Mapping[str, str], champion: Mapping[str, str] | None, gate: Gate,
           classes: Sequence[str], paired: Mapping[str, PairedDifference] | None = None) -> Decision:
    """Apply the promotion gate to two versions' metric tags and, where known, their paired results.

    Rules: with no champion, the candidate needs ``min_accuracy`` on PrivateTest. Otherwise its
    PrivateTest accuracy may not be lower by more than ``max_accuracy_drop`` points, no class's
    PrivateTest recall may be lower by more than ``max_class_recall_drop`` points, and CK+ and
    JAFFE accuracy may not be lower by more than ``max_cross_dataset_drop`` points. Where both
    versions' per-image results are known (``paired``), a rule compares the paired difference
    and refuses only when the whole interval lies below the allowed drop: a drop that the test
    set's noise can explain (JAFFE's 213 faces of 10 people: about +-3.5 points) does not refuse.
    Without them (versions evaluated before per-image results were logged) the two single-run
    figures are compared as they are.

    Args:
        candidate: Tags of the candidate version.
        champion: Tags of the current champion, or None when there is none.
        gate: Thresholds.
        classes: Class names (for the per-class recall rows).
        paired: Metric key (``private_test.accuracy``, ``jaffe.accuracy``, ...) to the paired
            difference candidate - champion on the same images.

    Returns:
        The decision with reasons and (metric, candidate, champion, change, rule, interval) rows
        in percent.
    """
    paired = paired or {}
    accuracy = _metric(candidate, HEADLINE, "the candidate")
    if champion is None:
        passed = 100 * accuracy >= gate.min_accuracy
        reason = (f"first champion: PrivateTest accuracy {100 * accuracy:.2f} % "
                  f"{'>=' if passed else '<'} the minimum {gate.min_accuracy:.2f} %")
        return Decision(passed, [reason], [(HEADLINE, _percent(accuracy), "-", "-",
                                            f">= {gate.min_accuracy:.2f}", "-")])
    failures, rows = [], []

    def check(key: str, allowed_drop: float, label: str, required: bool = True) -> None:
        if key not in candidate and key not in champion and not required:
            return
        new = _metric(candidate, key, "the candidate")
        old = _metric(champion, key, "the champion")
        change = 100 * (new - old)
        comparison = paired.get(key)
        if comparison is None:
            ok = change >= -allowed_drop - 1e-9
            interval = "single runs"
        else:
            ok = not comparison.worse_beyond(allowed_drop)
            interval = f"{comparison.interval} ({comparison.units})"
        rows.append((key, _percent(new), _percent(old), f"{change:+.2f}",
                     f"drop <= {allowed_drop:.2f} {'ok' if ok else 'FAIL'}", interval))
        if not ok:
            beyond = (f", {100 * comparison.confidence:.0f} % interval {comparison.interval} over "
                      f"{comparison.n_units} {comparison.units}" if comparison else "")
            failures.append(f"{label} {100 * new:.2f} % vs {100 * old:.2f} % ({change:+.2f} points{beyond}, "
                            f"allowed drop {allowed_drop:.2f})")

    check(HEADLINE, gate.max_accuracy_drop, "PrivateTest accuracy")
    for klass in classes:
        check(f"private_test.recall.{klass}", gate.max_class_recall_drop, f"{klass} recall", required=False)
    for key, label in CROSS_DATASET.items():
        check(key, gate.max_cross_dataset_drop, label)
    if failures:
        return Decision(False, failures, rows)
    change = 100 * (accuracy - _metric(champion, HEADLINE, "the champion"))
    headline = paired.get(HEADLINE)
    interval = f", interval {headline.interval}" if headline else ""
    return Decision(True, [f"every rule holds (PrivateTest accuracy {change:+.2f} points{interval})"], rows)


# Test sets of the per-image results, and the gate metric each one decides.
PAIRED_SETS = {"private_test": HEADLINE, "ckplus": "ckplus.accuracy", "jaffe": "jaffe.accuracy"}


def paired_results(candidate: Mapping[str, np.ndarray] | None, champion: Mapping[str, np.ndarray] | None,
                   classes: Sequence[str], gate: Gate) -> dict[str, PairedDifference]:
    """Paired differences (candidate - champion) for every gate metric both versions can be paired on.

    A set is paired only when both versions were scored on the same images in the same order
    (equal fingerprints); CK+ and JAFFE are bootstrapped over their people, PrivateTest over
    images; per-class recall compares the images of that class.

    Args:
        candidate: The candidate's per-image results (:func:`load_per_image`), or None.
        champion: The champion's, or None.
        classes: Class names (index = label).
        gate: For the interval's confidence and resamples.
    """
    if candidate is None or champion is None:
        return {}
    found: dict[str, PairedDifference] = {}
    for name, key in PAIRED_SETS.items():
        if f"{name}.correct" not in candidate or f"{name}.correct" not in champion:
            continue
        if str(candidate[f"{name}.fingerprint"]) != str(champion[f"{name}.fingerprint"]):
            logger.warning("%s: the two versions were scored on different test images; comparing single "
                           "figures", name)
            continue
        subjects = candidate.get(f"{name}.subject")
        new, old = candidate[f"{name}.correct"], champion[f"{name}.correct"]
        found[key] = paired_difference(new, old, subjects, resamples=gate.resamples,
                                       confidence=gate.confidence)
        if name == "private_test":
            label = candidate[f"{name}.label"]
            for index, klass in enumerate(classes):
                rows = label == index
                if rows.any():
                    found[f"private_test.recall.{klass}"] = paired_difference(
                        new[rows], old[rows], resamples=gate.resamples, confidence=gate.confidence)
    return found


def load_per_image(client: Any, run_id: str | None) -> dict[str, np.ndarray] | None:
    """A run's per-image evaluation results (``evaluate/per_image``), or None if it has none."""
    import tempfile

    from mlflow.exceptions import MlflowException

    if not run_id:
        return None
    try:
        with tempfile.TemporaryDirectory() as folder:
            path = client.download_artifacts(run_id, PER_IMAGE_ARTIFACT, folder)
            with np.load(path) as archive:
                return {name: archive[name] for name in archive.files}
    except (MlflowException, OSError) as error:
        logger.info("run %s has no per-image results (%s): the gate compares single figures", run_id, error)
        return None


def format_table(decision: Decision, candidate: str, champion: str) -> str:
    """The side-by-side comparison as a text table."""
    from tabulate import tabulate

    return tabulate(decision.rows, headers=["metric (%)", candidate, champion, "change", "rule",
                                            "interval of the change"],
                    tablefmt="github", disable_numparse=True)


@dataclass
class PromotionResult:
    """What ``promote`` did."""

    candidate: str
    champion: str | None
    decision: Decision
    action: str  # promoted | refused | unchanged | dry-run
    table: str


def resolve_version(client: Any, name: str, version: str | None, alias: str) -> Any:
    """The model version numbered ``version``, else the one ``alias`` points at, with clear errors."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as error:
        names = sorted(model.name for model in client.search_registered_models())
        raise RegistryError(f"registered model {name!r} does not exist (registered models: "
                            f"{', '.join(names) or 'none'}; the register stage creates it)") from error
    try:
        if version is not None:
            return client.get_model_version(name, str(version))
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as error:
        what = f"version {version}" if version is not None else f"alias {alias!r}"
        raise RegistryError(f"{name}: no {what}") from error


def promote(tracking_uri: str, name: str, gate: Gate, classes: Sequence[str], *, candidate_alias: str,
            version: str | None = None, dry_run: bool = False, force: bool = False,
            reason: str | None = None, now: dt.datetime | None = None) -> PromotionResult:
    """Move the ``champion`` alias to a candidate version if it passes the gate.

    Args:
        tracking_uri: MLflow tracking/registry URI.
        name: Registered model name.
        gate: Promotion thresholds.
        classes: Class names.
        candidate_alias: Alias naming the candidate when ``version`` is not given.
        version: Candidate version number (promote it, or roll back to it).
        dry_run: Decide and report, change nothing.
        force: Promote even if the gate refuses; needs ``reason``.
        reason: Why the gate is overridden (recorded as a tag).
        now: Timestamp for the tags (default: now, UTC).

    Returns:
        What was decided and done.
    """
    if force and not (reason and reason.strip()):
        raise ParamsError("--force needs --reason \"...\": an override must say why")
    client = _client(tracking_uri)
    candidate = resolve_version(client, name, version, candidate_alias)
    from mlflow.exceptions import MlflowException

    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        champion = None
    champion_version = str(champion.version) if champion else None
    label = f"v{candidate.version} (candidate)"
    champion_label = f"v{champion.version} (champion)" if champion else "(no champion)"
    if champion is not None and str(champion.version) == str(candidate.version):
        decision = Decision(True, [f"version {candidate.version} is already the champion"])
        return PromotionResult(str(candidate.version), str(champion.version), decision, "unchanged", "")
    paired = paired_results(load_per_image(client, candidate.run_id),
                            load_per_image(client, champion.run_id) if champion else None, classes, gate)
    decision = decide(candidate.tags, champion.tags if champion else None, gate, classes, paired)
    table = format_table(decision, label, champion_label)
    if dry_run:
        return PromotionResult(str(candidate.version), champion_version, decision, "dry-run", table)
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    previous = str(champion.version) if champion else "none"
    if decision.passed or force:
        tags = {"promotion.decision": "promoted" if decision.passed else "forced",
                "promotion.reason": decision.summary, "promotion.previous_champion": previous,
                "promotion.time": stamp}
        if force and not decision.passed:
            tags["promotion.force_reason"] = reason.strip()
        client.set_registered_model_alias(name, CHAMPION, str(candidate.version))
        action = "promoted"
    else:
        tags = {"promotion.decision": "refused", "promotion.reason": decision.summary,
                "promotion.champion_at_decision": previous, "promotion.time": stamp}
        action = "refused"
        # The same refusal again is not news: keep the first record instead of re-stamping it.
        if (candidate.tags.get("promotion.decision") == "refused"
                and candidate.tags.get("promotion.reason") == decision.summary
                and candidate.tags.get("promotion.champion_at_decision") == previous):
            tags = {}
    for key, value in tags.items():
        client.set_model_version_tag(name, str(candidate.version), key, value)
    return PromotionResult(str(candidate.version), champion_version, decision, action, table)

