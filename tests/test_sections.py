"""Every params section is strict: unknown keys, bad types and ranges are refused up front."""

from __future__ import annotations

import copy

import pytest
import yaml
from stages import params as params_stage

from ferops.errors import ParamsError
from ferops.io import read_json
from ferops.sections import check_params, section_schemas


@pytest.fixture(scope="module")
def committed(repo_root) -> dict:
    return yaml.safe_load((repo_root / "params.yaml").read_text())


def test_the_committed_params_pass_and_every_section_has_a_schema(committed):
    configs = check_params(committed)
    assert list(configs) == list(committed) == list(section_schemas())
    assert configs["train"].augment.flip is True and configs["base"].classes[1] == "disgust"


# Every section and nested section of params.yaml, as in the list of what ran on silently.
SECTIONS = ["base", "download", "download.datasets.fer2013", "validate", "validate.fer2013",
            "validate.ckplus", "validate.jaffe", "prepare", "prepare.ferplus", "prepare.clean",
            "prepare.jaffe", "oversample", "model", "train", "train.augment", "mlflow", "evaluate",
            "registry", "promote"]


@pytest.mark.parametrize("section", SECTIONS)
def test_a_misspelt_key_in_any_section_is_refused_by_name(committed, section):
    params = copy.deepcopy(committed)
    node = params
    for part in section.split("."):
        node = node[part]
    node["target_ratoi"] = 0.9
    with pytest.raises(ParamsError) as error:
        check_params(params)
    message = str(error.value)
    assert f"{section}.target_ratoi: unknown key; known keys here: " in message
    known = sorted(key for key in node if key != "target_ratoi")
    if section != "download.datasets.fer2013":  # optional keys of a dataset are listed too
        assert ", ".join(known) in message


@pytest.mark.parametrize(("dotted", "value", "expected"), [
    ("oversample.target_ratio", -1, "oversample.target_ratio: Input should be greater than 0"),
    ("oversample.method", "smoote", "oversample.method: Input should be 'random', 'smote' or 'none'"),
    ("evaluate.tta", "flipp", "evaluate.tta: Input should be 'none', 'flip' or 'tencrop'"),
    ("prepare.jaffe.on_no_face", "skip", "prepare.jaffe.on_no_face: Input should be 'center_crop' or 'drop'"),
    ("prepare.ferplus.majority", 1.5, "prepare.ferplus.majority: Input should be less than 1"),
    ("validate.sample_size", "five", "validate.sample_size: Input should be a valid integer"),
    ("base.seed", 1.5, "base.seed: Input should be a valid integer"),
    ("registry.alias", "", "registry.alias: String should have at least 1 character"),
    ("oversample.classes", ["disgusted"], "oversample.classes: 'disgusted' is not one of base.classes"),
    ("evaluate.groups", {"all": ["happy"]}, "evaluate.groups: classes in no group: angry"),
])
def test_bad_values_are_refused_with_the_key_and_what_was_expected(committed, dotted, value, expected):
    params = copy.deepcopy(committed)
    *parents, key = dotted.split(".")
    node = params
    for part in parents:
        node = node[part]
    node[key] = value
    with pytest.raises(ParamsError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        check_params(params)


def test_all_problems_are_reported_at_once_and_sections_are_checked_too(committed):
    params = copy.deepcopy(committed)
    params["trian"] = {"lr": 1}
    params["train"]["lr"] = 0
    del params["mlflow"]
    with pytest.raises(ParamsError) as error:
        check_params(params, "my-params.yaml")
    message = str(error.value)
    assert message.startswith("my-params.yaml: bad params:")
    assert "trian: unknown section; known sections: base, download" in message
    assert "mlflow: missing section" in message
    assert "train.lr: Input should be greater than 0" in message


def test_the_params_stage_writes_a_report_that_does_not_depend_on_the_values(committed, tmp_path, caplog):
    report = tmp_path / "params.json"
    params = copy.deepcopy(committed)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert params_stage.main(["--params", str(tmp_path / "params.yaml"), "--report", str(report)]) == 0
    first = report.read_bytes()
    params["train"]["lr"] = 0.05  # a valid change must not invalidate the downstream stages
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert params_stage.main(["--params", str(tmp_path / "params.yaml"), "--report", str(report)]) == 0
    assert report.read_bytes() == first
    assert read_json(report, "params")["checked"] == sorted(section_schemas())
    params["train"]["lr"] = "fast"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert params_stage.main(["--params", str(tmp_path / "params.yaml"), "--report", str(report)]) == 1
    assert "train.lr: Input should be a valid number" in caplog.text
