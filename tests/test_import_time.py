"""Importing medfed.experiment loads what every run needs, not what some runs need: Opacus only
with DP-SGD or client-level DP, MONAI only for its networks (resnet, densenet) and Grad-CAM,
scikit-learn and SciPy when metrics are computed or synthetic images blurred, networkx for a random
gossip graph. Checked through sys.modules in a fresh interpreter, not by timing.

Hand mutation that makes it fail: a module-level `import opacus` (or sklearn.metrics, networkx,
monai.networks) back in any module medfed.experiment imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("opacus", "monai", "monai.networks", "sklearn", "scipy", "networkx", "matplotlib",
         "pydicom", "nibabel")


def test_importing_the_experiment_loads_no_heavy_library():
    code = ("import json, sys; import medfed.experiment; "
            f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, check=True, capture_output=True,
                         text=True, timeout=120).stdout
    assert json.loads(out.strip().splitlines()[-1]) == []
