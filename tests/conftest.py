"""Shared fixtures: tiny models built in code, the built-in avatar built once per run."""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "backend"))


def tiny_flame_dict(V: int = 40, F: int = 60, seed: int = 0, n_cols: int = 400) -> dict:
    """A random model in FLAME's pickle layout (small: V vertices, F faces)."""
    rng = np.random.default_rng(seed)
    w = rng.random((V, 5)).astype(np.float32)
    w /= w.sum(1, keepdims=True)
    J = np.zeros((5, V), np.float32)
    for j in range(5):
        J[j, rng.choice(V, 4, replace=False)] = 0.25
    return {
        "v_template": rng.normal(0, 0.1, (V, 3)).astype(np.float32),
        "f": rng.integers(0, V, (F, 3)).astype(np.int64),
        "shapedirs": rng.normal(0, 1e-2, (V, 3, n_cols)).astype(np.float32),
        "posedirs": rng.normal(0, 1e-3, (V, 3, 36)).astype(np.float32),
        "J_regressor": J,
        "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], np.int64),
        "weights": w,
    }


def write_pickle(path: Path, obj) -> Path:
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=2)
    return path


@pytest.fixture(scope="session")
def builtin_avatar_dir(tmp_path_factory) -> Path:
    """The built-in avatar (identity 0), small enough for tests."""
    from edit3dgs.builtin import make_avatar

    out = tmp_path_factory.mktemp("builtin") / "avatar"
    make_avatar(out, identity=0, frames=8, gaussians_per_face=2, sh_degree=3)
    return out


@pytest.fixture()
def cli(capsys):
    """Run the edit3dgs CLI in-process; returns (exit code, stdout, stderr). The CLI sets PyTorch's
    thread count for its process; here the test's own setting is restored after each call."""
    import torch

    from edit3dgs.cli import main

    def run(*args):
        n = torch.get_num_threads()
        try:
            code = main([str(a) for a in args])
        finally:
            torch.set_num_threads(n)
        out = capsys.readouterr()
        return code, out.out, out.err

    return run
