import numpy as np
import pytest

from ferops.io import (
    atomic_directory,
    atomic_file,
    file_digest,
    load_arrays,
    save_arrays,
    scratch_directory,
    write_json,
)


def test_save_arrays_is_byte_deterministic_and_loadable(tmp_path):
    arrays = {"images": np.arange(48, dtype=np.uint8).reshape(3, 4, 4),
              "names": np.asarray(["a", "bb"], dtype="U4"), "flag": np.array([True, False])}
    save_arrays(tmp_path / "a.npz", arrays)
    save_arrays(tmp_path / "b.npz", dict(reversed(arrays.items())))
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    loaded = load_arrays(tmp_path / "a.npz")
    assert sorted(loaded) == ["flag", "images", "names"]
    np.testing.assert_array_equal(loaded["images"], arrays["images"])
    assert loaded["names"].tolist() == ["a", "bb"]


def test_atomic_file_keeps_previous_content_on_failure(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"version": 1})
    before = target.read_bytes()
    with pytest.raises(RuntimeError), atomic_file(target) as temp:
        temp.write_text("half-written")
        raise RuntimeError("boom")
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temp file left behind


def test_atomic_directory_swaps_only_on_success(tmp_path):
    target = tmp_path / "outdir"
    with atomic_directory(target) as temp:
        (temp / "a.txt").write_text("one")
    with pytest.raises(RuntimeError), atomic_directory(target) as temp:
        (temp / "a.txt").write_text("two")
        raise RuntimeError("boom")
    assert (target / "a.txt").read_text() == "one"
    with atomic_directory(target) as temp:
        (temp / "b.txt").write_text("three")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outdir"]


def test_load_arrays_errors_name_the_file(tmp_path):
    from ferops.errors import DataError

    with pytest.raises(DataError, match="missing.npz: file not found"):
        load_arrays(tmp_path / "missing.npz")
    (tmp_path / "bad.npz").write_text("not a zip")
    with pytest.raises(DataError, match="bad.npz: not a readable .npz"):
        load_arrays(tmp_path / "bad.npz")


def test_read_json_names_the_file_and_the_stage_that_writes_it(tmp_path):
    from ferops.errors import DataError
    from ferops.io import read_json

    with pytest.raises(DataError, match=r"metrics.json: report not found; .*`dvc repro evaluate`"):
        read_json(tmp_path / "metrics.json", "evaluate")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="bad.json: not valid JSON"):
        read_json(tmp_path / "bad.json", "evaluate")
    write_json(tmp_path / "good.json", {"accuracy": 0.5})
    assert read_json(tmp_path / "good.json", "evaluate") == {"accuracy": 0.5}


def test_a_writer_removes_temporaries_left_by_a_killed_run(tmp_path):
    # SIGKILL leaves `.<name>.<random>.tmp` (and a half-swapped `.<name>.old-<pid>`) behind; the next
    # writer of the same output removes them, and only them.
    stale_dir = tmp_path / ".prepared.k1ll3d.tmp"
    (stale_dir / "deep").mkdir(parents=True)
    (stale_dir / "deep" / "train.npz").write_bytes(b"x" * 1000)
    (tmp_path / ".prepared.old-12345").mkdir()
    (tmp_path / ".prepared.abc.scratch").mkdir()
    (tmp_path / ".metrics.json.k1ll3d.tmp").write_text("{")
    (tmp_path / ".other.k1ll3d.tmp").mkdir()  # another output's: not ours to remove
    with atomic_directory(tmp_path / "prepared") as temp:
        (temp / "a.txt").write_text("new")
    with atomic_file(tmp_path / "metrics.json") as temp:
        temp.write_text("{}")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == [".other.k1ll3d.tmp", ".prepared.abc.scratch", "metrics.json", "prepared"]
    with scratch_directory(tmp_path / "prepared") as scratch:
        assert scratch.is_dir() and scratch.name.endswith(".scratch")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.k1ll3d.tmp", "metrics.json", "prepared"]


def test_file_digest_matches_hashlib(tmp_path):
    import hashlib

    path = tmp_path / "blob"
    path.write_bytes(b"ferops" * 100_000)
    assert file_digest(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert file_digest(path, "md5") == hashlib.md5(path.read_bytes()).hexdigest()
