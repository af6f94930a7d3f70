"""Golden vectors: a few oracle cases stored as ``.npz`` files for implementations outside Python/torch.

Each file in ``bora_ref/data/golden/`` holds the inputs ``x (..., n)``, ``B (m, r)``, ``A (r, n)``,
``sigma (b, b, r)`` and a cotangent ``g (..., m)`` in the case's dtype, and the float64 truth computed
from exactly those values: ``y = x @ ΔW.T`` ``(..., m)``, ``delta_weight`` ``(m, n)`` and the gradients
of $\\langle g, y \\rangle$ ``grad_x``, ``grad_B``, ``grad_A``, ``grad_sigma``. ``manifest.json`` lists
every file with its case, ``m, n, r, b``, block sizes, dtype, seed, array shapes and SHA-256.

The ``.npz`` files are plain (uncompressed) zip archives of ``.npy`` arrays with a fixed timestamp, so
regenerating them on the same platform rewrites the same bytes. Regenerate with
``bora-ref golden --regenerate`` (or ``python -m bora_ref.testing.golden --regenerate``); check with
``bora-ref golden``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from .. import numpy_ref
from .._validation import BoRAValueError
from ..partition import block_sizes
from ._truth import truth
from .cases import OracleCase, case_values, get_case
from .results import dtype_name

__all__ = ["GOLDEN_CASES", "GOLDEN_SEED", "golden_dir", "golden_arrays", "write_golden", "read_manifest",
           "load_golden", "verify_golden"]

# (built-in case name, input dtype): even and uneven splits, r > block, b = min(m, n), x (n,) and
# (batch, t, n), in float64 and float32 (.npy has no bfloat16).
GOLDEN_CASES: tuple[tuple[str, torch.dtype], ...] = (
    ("even-square", torch.float64),
    ("uneven-tall", torch.float64),
    ("uneven-wide", torch.float64),
    ("r-exceeds-block", torch.float64),
    ("b=min(m,n)-tall", torch.float64),
    ("x-3d", torch.float64),
    ("uneven-tall", torch.float32),
    ("x-vector", torch.float32),
)
GOLDEN_SEED = 0
_MANIFEST = "manifest.json"
_INPUTS = ("x", "B", "A", "sigma", "g")
# Truth is recomputed on whatever BLAS the checker has: agreement to 1e-12 of max |truth|, not bit-equality.
_RTOL = 1e-12


def golden_dir() -> Path:
    """The packaged directory ``bora_ref/data/golden``."""
    return Path(__file__).resolve().parent.parent / "data" / "golden"


def _file_name(case: OracleCase, dtype: torch.dtype) -> str:
    return f"{re.sub(r'[^A-Za-z0-9]+', '-', case.name).strip('-')}-{dtype_name(dtype)}.npz"


def golden_arrays(case: OracleCase, dtype: torch.dtype, seed: int = GOLDEN_SEED) -> dict[str, np.ndarray]:
    """Inputs (in ``dtype``, as NumPy) and float64 truth for one case; what a golden file holds.

    Raises:
        BoRAValueError: ``dtype`` is bfloat16 (NumPy has no such dtype), or as
            [`case_values`][bora_ref.testing.cases.case_values].
    """
    if dtype == torch.bfloat16:
        raise BoRAValueError("dtype must have a NumPy equivalent for .npy files, got torch.bfloat16")
    values = case_values(case, dtype, seed)
    want = truth(values, grad=True)
    np_dtype = np.dtype(dtype_name(dtype))
    out = {k: values[k].astype(np_dtype) for k in _INPUTS}  # exact: the values are already rounded
    out["y"] = want["y"]
    out["delta_weight"] = numpy_ref.delta_weight(values["B"], values["A"], values["sigma"])
    for name in ("x", "B", "A", "sigma"):
        out[f"grad_{name}"] = want[f"grad {name}"]
    return out


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Uncompressed ``.npz`` with a fixed timestamp (reproducible bytes), written atomically."""
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            with zf.open(info, "w") as f:
                np.lib.format.write_array(f, np.ascontiguousarray(arr), allow_pickle=False)
    os.replace(tmp, path)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_golden(directory: str | os.PathLike[str] | None = None, seed: int = GOLDEN_SEED) -> dict:
    """(Re)generate every golden file and the manifest in ``directory`` (default [`golden_dir`][bora_ref.testing.golden.golden_dir]).

    Returns:
        The manifest (also written to ``manifest.json``).
    """
    out_dir = Path(directory) if directory is not None else golden_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for name, dtype in GOLDEN_CASES:
        case = get_case(name)
        arrays = golden_arrays(case, dtype, seed)
        path = out_dir / _file_name(case, dtype)
        _write_npz(path, arrays)
        entries.append({
            "file": path.name, "case": case.name, "m": case.m, "n": case.n, "r": case.r, "b": case.b,
            "row_blocks": list(block_sizes(case.m, case.b)), "col_blocks": list(block_sizes(case.n, case.b)),
            "x_shape": list(case.x_shape), "dtype": dtype_name(dtype), "seed": seed,
            "arrays": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in arrays.items()},
            "sha256": _sha256(path),
        })
    manifest = {
        "format": "bora_ref golden vectors 1",
        "convention": "dW[block i, block j] = B_i @ diag(sigma[i, j]) @ A_j, blocks as numpy.array_split "
                      "(larger blocks first); y = x @ dW.T (no scaling); grad_* are gradients of sum(g * y); "
                      "inputs x, B, A, sigma, g are in `dtype`, everything else is float64 truth computed "
                      "from those exact values",
        "regenerate": "bora-ref golden --regenerate",
        "files": entries,
    }
    tmp = out_dir / (_MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp, out_dir / _MANIFEST)
    return manifest


def read_manifest(directory: str | os.PathLike[str] | None = None) -> dict:
    """The parsed ``manifest.json`` of ``directory`` (default [`golden_dir`][bora_ref.testing.golden.golden_dir])."""
    return json.loads((Path(directory) if directory is not None else golden_dir()).joinpath(_MANIFEST).read_text())


def load_golden(file: str, directory: str | os.PathLike[str] | None = None) -> dict[str, np.ndarray]:
    """The arrays of one golden file, e.g. ``load_golden("uneven-tall-float64.npz")``.

    Raises:
        BoRAValueError: ``file`` is not listed in the manifest.
    """
    files = [e["file"] for e in read_manifest(directory)["files"]]
    if file not in files:
        raise BoRAValueError(f"file must be one of the golden files {files}, got {file!r}")
    with np.load((Path(directory) if directory is not None else golden_dir()) / file, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def verify_golden(directory: str | os.PathLike[str] | None = None) -> list[str]:
    """Check every golden file: hash, manifest metadata, and stored truth against the reference.

    The truth (``y``, ``delta_weight``, gradients) is recomputed in float64 with
    [`bora_ref.numpy_ref`][bora_ref.numpy_ref] from the stored inputs and must agree to ``1e-12`` of its largest entry.

    Returns:
        One line per problem found; empty when all is well.
    """
    base = Path(directory) if directory is not None else golden_dir()
    problems = []
    for entry in read_manifest(base)["files"]:
        path = base / entry["file"]
        if not path.is_file():
            problems.append(f"{entry['file']}: listed in the manifest but missing")
            continue
        if _sha256(path) != entry["sha256"]:
            problems.append(f"{entry['file']}: SHA-256 {_sha256(path)} differs from the manifest's {entry['sha256']}")
        try:
            arrays = load_golden(entry["file"], base)
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            problems.append(f"{entry['file']}: cannot be read as .npz: {exc}")
            continue
        shapes = {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in arrays.items()}
        if shapes != entry["arrays"] or str(arrays["x"].dtype) != entry["dtype"]:
            problems.append(f"{entry['file']}: arrays {shapes} do not match the manifest's {entry['arrays']}")
            continue
        values = {k: arrays[k].astype(np.float64) for k in _INPUTS}
        want = truth(values, grad=True)
        want = {"y": want["y"], "delta_weight": numpy_ref.delta_weight(values["B"], values["A"], values["sigma"]),
                **{f"grad_{k}": want[f"grad {k}"] for k in ("x", "B", "A", "sigma")}}
        for key, expected in want.items():
            err = float(np.abs(arrays[key] - expected).max(initial=0.0))
            if err > _RTOL * float(np.abs(expected).max(initial=0.0)):
                problems.append(f"{entry['file']}: {key} differs from the reference by {err:.3e}")
    return problems
