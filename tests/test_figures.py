import os
import subprocess
import sys

import numpy as np

from ferops.fer2013 import parse_pixels

# Draw real faces under a backend that cannot write PNG by itself, then check that importing
# ferops.figures neither switched the backend nor loaded pyplot, and that the PNG is real.
SCRIPT = """
import sys, numpy as np, matplotlib
from ferops import figures
assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
images = np.load(sys.argv[1])
figures.image_grid(images, [f"row {i}" for i in range(len(images))], sys.argv[2], title="faces")
figures.grouped_bars(["a", "b"], {"x": [1, 2], "y": [3, 4]}, sys.argv[3], title="bars")
assert "matplotlib.pyplot" not in sys.modules
"""


def draw(tmp_path, images, name):
    np.save(tmp_path / "faces.npy", images)
    grid, bars = tmp_path / f"{name}_grid.png", tmp_path / f"{name}_bars.png"
    subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "faces.npy"), str(grid), str(bars)],
                   check=True, env=dict(os.environ, MPLBACKEND="svg"))
    return grid.read_bytes(), bars.read_bytes()


def test_figures_need_no_backend_switch_and_are_reproducible(tmp_path, raw_dir):
    import pandas as pd

    faces = parse_pixels(pd.read_csv(raw_dir / "fer2013.csv", nrows=12)["pixels"])
    first = draw(tmp_path, faces, "first")
    second = draw(tmp_path, faces, "second")
    for png in first:
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert first == second  # same data, same bytes (no timestamps or software tags)
    assert draw(tmp_path, faces[::-1].copy(), "other")[0] != first[0]
