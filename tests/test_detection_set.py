"""The committed detection benchmark set is whole and its annotations fit its photos."""

from __future__ import annotations

import csv
import hashlib
from collections import Counter

import cv2
import pytest


@pytest.fixture(scope="module")
def folder(repo_root):
    return repo_root / "benchmarks" / "detection_set"


def test_every_file_matches_its_checksum(folder):
    listed = {}
    for line in (folder / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        listed[name.strip()] = digest
    present = {p.name for p in folder.iterdir()} - {"SHA256SUMS", "SOURCES.md"}
    assert set(listed) == present  # nothing unlisted, nothing missing
    for name, digest in listed.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name


def test_the_set_is_as_large_as_promised_and_boxes_lie_in_their_photos(folder):
    photos = sorted(p for p in folder.iterdir() if p.suffix in (".jpg", ".png"))
    assert len(photos) >= 30
    assert all(p.stat().st_size < 2 * 2**20 for p in photos)
    sizes = {p.name: cv2.imread(str(p)).shape[:2] for p in photos}
    with open(folder / "faces.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) >= 150
    per_photo = Counter(row["photo"] for row in rows)
    assert set(per_photo) <= set(sizes) and max(per_photo.values()) >= 20  # a real group photo
    for row in rows:
        height, width = sizes[row["photo"]]
        x, y, w, h = (int(row[k]) for k in ("x", "y", "w", "h"))
        assert w > 0 and h > 0 and 0 <= x and 0 <= y and x + w <= width and y + h <= height, row
        assert row["difficult"] in ("0", "1")
    # Every photo's source is stated.
    sources = (folder / "SOURCES.md").read_text()
    assert all(f"| {name} |" in sources for name in sizes)
