import json

import numpy as np
import pytest
import yaml
from stages import prepare as prepare_stage

from ferops.config import build
from ferops.errors import ParamsError
from ferops.fer2013 import read_fer2013
from ferops.inference import FER2013_CLASSES
from ferops.io import load_arrays
from ferops.prepare import CleaningRules, prepare_fer2013

CLASSES = list(FER2013_CLASSES)


def stage_args(raw_dir, tmp_path, validation, params=None):
    args = ["--raw", str(raw_dir), "--validation", str(validation), "--out", str(tmp_path / "prepared"),
            "--report", str(tmp_path / "prepare.json"), "--figures", str(tmp_path / "figures"),
            "--galleries", str(tmp_path / "galleries")]
    return args + (["--params", str(params)] if params else [])


@pytest.mark.slow
def test_prepare_stage_on_real_data(raw_dir, tmp_path, repo_root):
    validation = tmp_path / "validation.json"
    validation.write_text('{"success": true}')
    assert prepare_stage.main(stage_args(raw_dir, tmp_path, validation,
                                         repo_root / "params.yaml")) == 0
    report = json.loads((tmp_path / "prepare.json").read_text())
    train = load_arrays(tmp_path / "prepared" / "train.npz")
    private = load_arrays(tmp_path / "prepared" / "private_test.npz")
    # Test splits stay intact; their leaked rows are flagged (568 across both test splits).
    assert len(private["label"]) == 3589
    public = load_arrays(tmp_path / "prepared" / "public_test.npz")
    assert int(private["flag_leakage"].sum() + public["flag_leakage"].sum()) == 568
    # Training lost exactly what the report says, and no Training image remains in a test split.
    assert len(train["label"]) == report["splits"]["Training"]["rows_out"]
    assert 28709 - len(train["label"]) == sum(report["splits"]["Training"]["removed"].values())
    test_images = {image.tobytes() for image in np.concatenate([private["images"], public["images"]])}
    assert not any(image.tobytes() in test_images for image in train["images"])
    assert not train["flag_non_faces"].any() and not train["flag_blank"].any()
    # Row numbers still point at the source rows.
    fer = read_fer2013(raw_dir / "fer2013.csv")
    np.testing.assert_array_equal(fer.images[train["row_index"]], train["images"])
    assert train["classes"].tolist() == CLASSES
    # External sets and figures.
    assert len(load_arrays(tmp_path / "prepared" / "ckplus.npz")["label"]) == 981
    assert len(load_arrays(tmp_path / "prepared" / "jaffe.npz")["label"]) == 213
    assert (tmp_path / "figures" / "class_distribution.png").stat().st_size > 10_000
    assert {p.name for p in (tmp_path / "galleries").iterdir()} >= {
        "removed_non_faces.png", "removed_leakage.png", "jaffe_crops.png"}


def test_failed_validation_stops_prepare_and_keeps_outputs(raw_dir, tmp_path):
    (tmp_path / "prepared").mkdir()
    (tmp_path / "prepared" / "train.npz").write_bytes(b"previous")
    validation = tmp_path / "validation.json"
    validation.write_text('{"success": false}')
    assert prepare_stage.main(stage_args(raw_dir, tmp_path, validation)) == 1
    assert (tmp_path / "prepared" / "train.npz").read_bytes() == b"previous"
    assert not (tmp_path / "prepare.json").exists()


def test_bad_param_fails_before_work(raw_dir, tmp_path, repo_root, caplog):
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params["prepare"]["labels"] = "fer+"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    validation = tmp_path / "validation.json"
    validation.write_text('{"success": true}')
    assert prepare_stage.main(stage_args(raw_dir, tmp_path, validation, path)) == 1
    assert "prepare.labels: Input should be 'fer2013' or 'ferplus'; got 'fer+'" in caplog.text


@pytest.mark.slow
def test_ferplus_mode_drops_unlabelled_training_rows_only(fer_and_votes):
    fer, votes, has_name = fer_and_votes
    result = prepare_fer2013(fer, votes, has_name, classes=CLASSES, labels="ferplus")
    train = result.splits["Training"]
    assert (train["label"] >= 0).all()
    assert np.bincount(train["label"], minlength=7)[1] <= 119  # disgust, FER+ majority
    np.testing.assert_array_equal(train["label"], train["label_ferplus"])
    # Test rows without a FER+ label are kept (label -1) so the original-label figure still
    # covers the whole split.
    private = result.splits["PrivateTest"]
    assert len(private["label"]) == 3589 and (private["label"] == -1).sum() == 452


@pytest.mark.slow
def test_rules_switch_off_and_clean_test(fer_and_votes):
    fer, votes, has_name = fer_and_votes
    nothing = CleaningRules(non_faces=False, blank=False, conflicting_duplicates=False,
                            leakage="none")
    kept = prepare_fer2013(fer, votes, has_name, classes=CLASSES, rules=nothing)
    assert len(kept.splits["Training"]["label"]) == 28709
    cleaned = prepare_fer2013(fer, votes, has_name, classes=CLASSES, clean_test=True)
    assert len(cleaned.splits["PrivateTest"]["label"]) < 3589
    assert cleaned.report["splits_cleaned"] == ["PrivateTest", "PublicTest", "Training"]


def test_cleaning_rules_validate_params():
    with pytest.raises(ParamsError, match="prepare.clean.leakage: Input should be 'exact', 'phash' or"):
        build(CleaningRules, {"leakage": "fuzzy"}, "prepare.clean")
    with pytest.raises(ParamsError, match=r"prepare.clean.blanks: unknown key; known keys here: blank, "):
        build(CleaningRules, {"blanks": True}, "prepare.clean")
