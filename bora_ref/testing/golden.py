"""Golden vectors: a few oracle cases stored as ``.npz`` files for implementations outside Python/torch.

Each file in ``bora_ref/data/golden/`` holds the inputs ``x (..., n)``, ``B (m, r)``, ``A (r, n)``,
``sigma (b, b, r)`` and a cotangent ``g (..., m)`` in the case's dtype, and the float64 truth computed
from exactly those values: ``y = x @ ΔW.T`` ``(..., m)``, ``delta_weight`` ``(m, n)`` and the gradients
of $\\langle g, y \\rangle$ ``grad_x``, ``grad_B``, ``grad_A``, ``grad_sigma``. ``manifest.json`` lists
every file with its case, ``m, n, r, b``, block sizes, dtype, seed, array shapes and SHA-256.

The manifest records its ``format_version``
([`GOLDEN_FORMAT_VERSION`][bora_ref.testing.golden.GOLDEN_FORMAT_VERSION], now 2) and the block
``split_rule``, ``"array_split"``: the first ``m % b`` row blocks and ``n % b`` column blocks are one
larger (``numpy.array_split``), and every entry lists its ``row_blocks`` and ``col_blocks``.
A manifest with an unknown or newer version, or another split rule, is refused (the stored arrays
would be read with the wrong blocks); version 1 manifests (``"format": "bora_ref golden vectors 1"``)
predate both fields, were cut by ``array_split``, and are still read.

The ``.npz`` files are plain (uncompressed) zip archives of ``.npy`` arrays with a fixed timestamp, so
regenerating them on the same platform rewrites the same bytes. Regenerate with
``bora-ref golden --regenerate``; check with
``bora-ref golden``.

[`check_golden`][bora_ref.testing.check_golden] runs a torch implementation on every file and compares its output and all four
gradients with the stored truth (``bora-ref check --golden MODULE:FN`` from the shell). The bar, per
array: ``max |got - truth| <= GOLDEN_RTOL[dtype] * max |truth|``, ``1e-10`` for float64 inputs and
``1e-5`` for float32 (about 84 float32 epsilons; a bfloat16, float16 or TF32 detour errs by 1e-4 to
1e-2 of ``max |truth|``, a logic error by order one). Implementations outside Python apply the same
bar; the manifest states it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zipfile
from typing import IO
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from .. import numpy_ref
from .._io import atomic_write
from .._validation import BoRAValueError
from ..partition import SPLIT_RULE, block_sizes, check_split_rule
from ._truth import QUANTITIES, truth
from .cases import OracleCase, case_values, get_case
from .results import Comparison, OracleFailure, OracleReport, dtype_name

__all__ = ["GOLDEN_CASES", "GOLDEN_FORMAT_VERSION", "GOLDEN_SEED", "GOLDEN_RTOL", "golden_dir", "golden_arrays",
           "write_golden", "read_manifest", "load_golden", "verify_golden", "check_golden"]

# (built-in case name, input dtype): even and uneven splits, r > block, b = min(m, n), x (n,) and
# (batch, t, n), in float64 and float32 (.npy has no bfloat16).
GOLDEN_CASES: tuple[tuple[str, torch.dtype], ...] = (
    ("even-square", torch.float64),
    ("uneven-tall", torch.float64),
    ("uneven-wide", torch.float64),
    ("r-exceeds-block", torch.float64),
    ("b=min(m,n)-tall", torch.float64),
    ("x-3d", torch.float64),
    ("x-4d", torch.float64),
    ("uneven-tall", torch.float32),
    ("x-vector", torch.float32),
    ("decode-1x1xn", torch.float32),
)
GOLDEN_RTOL: dict[str, float] = {"float64": 1e-10, "float32": 1e-5}
"""The bar of [`check_golden`][bora_ref.testing.check_golden] per input dtype: for ``y`` and every gradient,
``max |got - truth| <= GOLDEN_RTOL[dtype] * max |truth|``. The manifest states it too.

Examples:
    >>> from bora_ref.testing import GOLDEN_RTOL
    >>> from bora_ref.testing.golden import read_manifest
    >>> GOLDEN_RTOL == read_manifest()["tolerance"]["rtol"]
    True
"""
GOLDEN_SEED = 0
GOLDEN_FORMAT_VERSION = 2
"""The manifest ``format_version`` [`write_golden`][bora_ref.testing.golden.write_golden] writes; version 2 added
``format_version`` and ``split_rule``. Versions 1 and 2 are read."""
_READABLE_VERSIONS = (1, GOLDEN_FORMAT_VERSION)
_VERSION_1_FORMAT = "bora_ref golden vectors 1"  # version 1 manifests carry their version only in this string
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

    def write(out: IO[bytes]) -> None:
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as zf:
            for name, arr in arrays.items():
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.external_attr = 0o644 << 16
                with zf.open(info, "w") as f:
                    np.lib.format.write_array(f, np.ascontiguousarray(arr), allow_pickle=False)

    atomic_write(path, write)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_golden(directory: str | os.PathLike[str] | None = None, seed: int = GOLDEN_SEED) -> dict:
    """(Re)generate every golden file and the manifest in ``directory`` (default [`golden_dir`][bora_ref.testing.golden.golden_dir]).

    Returns:
        The manifest (also written to ``manifest.json``).
    """
    out_dir = Path(directory) if directory is not None else golden_dir()
    if out_dir.exists() and not out_dir.is_dir():
        raise BoRAValueError(f"directory must be a directory (or not exist yet), got the file {str(out_dir)!r}")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BoRAValueError(f"directory {str(out_dir)!r} cannot be created: {exc}") from None
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
        "format": "bora_ref golden vectors",
        "format_version": GOLDEN_FORMAT_VERSION,
        "split_rule": SPLIT_RULE,
        "convention": "dW[block i, block j] = B_i @ diag(sigma[i, j]) @ A_j, blocks as numpy.array_split "
                      "(larger blocks first); y = x @ dW.T (no scaling); grad_* are gradients of sum(g * y); "
                      "inputs x, B, A, sigma, g are in `dtype`, everything else is float64 truth computed "
                      "from those exact values",
        "regenerate": "bora-ref golden --regenerate",
        "tolerance": {"rule": "per array (y and each grad_*): max |got - truth| <= rtol[dtype] * max |truth|",
                      "rtol": GOLDEN_RTOL},
        "files": entries,
    }
    atomic_write(out_dir / _MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())
    return manifest


def _directory(directory: str | os.PathLike[str] | None) -> Path:
    """``directory`` (default [`golden_dir`][bora_ref.testing.golden.golden_dir]), which must hold a manifest."""
    base = Path(directory) if directory is not None else golden_dir()
    if not base.is_dir():
        raise BoRAValueError(f"directory must be an existing directory of golden files, got {str(base)!r}")
    if not (base / _MANIFEST).is_file():
        raise BoRAValueError(f"directory must hold a {_MANIFEST} (write one with `bora-ref golden --regenerate "
                             f"--dir DIR`), got {str(base)!r} without it")
    return base


_MAX_MANIFEST_BYTES = 1 << 20


def read_manifest(directory: str | os.PathLike[str] | None = None) -> dict:
    """The parsed ``manifest.json`` of ``directory`` (default [`golden_dir`][bora_ref.testing.golden.golden_dir]).

    Raises:
        BoRAValueError: ``directory`` is not a directory, has no manifest, or the manifest is larger
            than 1 MiB, not a JSON object with a list of ``files``, each with a ``file`` name, has a
            ``format_version`` other than 1 or 2, or a ``split_rule`` other than ``"array_split"``
            (version 1 manifests have none and mean ``"array_split"``).
    """
    path = _directory(directory) / _MANIFEST
    if path.stat().st_size > _MAX_MANIFEST_BYTES:
        raise BoRAValueError(f"manifest must be at most {_MAX_MANIFEST_BYTES} bytes, got {path.stat().st_size} in "
                             f"{str(path)!r}")
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, RecursionError, UnicodeDecodeError) as exc:
        raise BoRAValueError(f"manifest {str(path)!r} must be valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list) or not all(
            isinstance(e, dict) and isinstance(e.get("file"), str) for e in manifest["files"]):
        raise BoRAValueError(f"manifest {str(path)!r} must be an object with a list of files, each with a 'file' name")
    version = manifest.get("format_version", 1 if manifest.get("format") == _VERSION_1_FORMAT else "<missing>")
    if type(version) is not int or version not in _READABLE_VERSIONS:
        raise BoRAValueError(f"manifest {str(path)!r} has format_version={version!r:.80}; this bora_ref reads format "
                             f"versions {', '.join(map(str, _READABLE_VERSIONS))} (version 1 manifests say "
                             f"\"format\": \"{_VERSION_1_FORMAT}\" instead)")
    check_split_rule(f"manifest {str(path)!r}", manifest, version)
    return manifest


def load_golden(file: str, directory: str | os.PathLike[str] | None = None) -> dict[str, np.ndarray]:
    """The arrays of one golden file, e.g. ``load_golden("uneven-tall-float64.npz")``.

    Raises:
        BoRAValueError: ``file`` is not listed in the manifest.
    """
    files = [e["file"] for e in read_manifest(directory)["files"]]
    if file not in files:
        raise BoRAValueError(f"file must be one of the golden files {files}, got {file!r}")
    with np.load(_directory(directory) / file, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def verify_golden(directory: str | os.PathLike[str] | None = None) -> list[str]:
    """Check every golden file: hash, manifest metadata (block sizes too), and stored truth against the reference.

    The truth (``y``, ``delta_weight``, gradients) is recomputed in float64 with
    [`bora_ref.numpy_ref`][bora_ref.numpy_ref] from the stored inputs and must agree to ``1e-12`` of its largest entry.

    Returns:
        One line per problem found; empty when all is well.
    """
    base = _directory(directory)
    problems = []
    for entry in read_manifest(base)["files"]:
        path = base / entry["file"]
        if not path.is_file():
            problems.append(f"{entry['file']}: listed in the manifest but missing")
            continue
        if _sha256(path) != entry["sha256"]:
            problems.append(f"{entry['file']}: SHA-256 {_sha256(path)} differs from the manifest's {entry['sha256']}")
        try:
            blocks = [list(block_sizes(entry["m"], entry["b"])), list(block_sizes(entry["n"], entry["b"]))]
        except (KeyError, ValueError) as exc:
            blocks = [f"none (m, n, b invalid: {exc})"] * 2
        if [entry.get("row_blocks"), entry.get("col_blocks")] != blocks:
            problems.append(f"{entry['file']}: row_blocks={entry.get('row_blocks')} "
                            f"col_blocks={entry.get('col_blocks')} are not the {SPLIT_RULE} blocks {blocks[0]} and {blocks[1]}")
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


def check_golden(
    fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    grad: bool = True,
    directory: str | os.PathLike[str] | None = None,
    files: Sequence[str] | None = None,
    device: str | torch.device = "cpu",
    timeout: float | None = None,
) -> OracleReport:
    """Run ``fn(x, B, A, sigma)`` on every golden file; compare ``y`` and (with ``grad``) all four gradients.

    The files are first verified ([`verify_golden`][bora_ref.testing.golden.verify_golden]: hashes and
    stored truth). For each file, in manifest order, ``fn`` is called once on the stored inputs
    (torch tensors in the stored dtype on ``device``; ``sigma`` is the effective $\\Sigma$ diagonals,
    used as given) and, with ``grad``, one backward of $\\langle g, y \\rangle$ with the stored
    cotangent ``g`` gives the gradients. Each array must satisfy
    ``max |got - truth| <= GOLDEN_RTOL[dtype] * max |truth|`` (``1e-10`` for float64 files, ``1e-5``
    for float32). Every file is checked before failing.

    Args:
        fn: the implementation, as for [`check_implementation`][bora_ref.testing.check_implementation].
        grad: also check ``grad_x``, ``grad_B``, ``grad_A``, ``grad_sigma`` (``fn`` must be
            differentiable with torch autograd).
        directory: a directory of golden files with its ``manifest.json`` (default: the packaged one).
        files: only these file names (default: every file in the manifest).
        device: where ``fn`` runs; must be available.
        timeout: seconds one call (or backward) may take, as in
            [`check_implementation`][bora_ref.testing.check_implementation].

    Returns:
        An [`OracleReport`][bora_ref.testing.OracleReport] with one comparison per file and array.

    Raises:
        OracleFailure: some file failed (the message lists every failing file, its problem and a
            replay line); an exception raised by ``fn`` is chained as ``__cause__``.
        BoRAValueError: a bad argument, a directory without a manifest, an unknown file name, or golden
            files that fail verification.

    Examples:
        >>> from bora_ref import torch_ref
        >>> from bora_ref.testing import check_golden
        >>> report = check_golden(torch_ref.bora_matmul)  # every file, output and four gradients
        >>> report.cases_run, all(c.passed for c in report.comparisons)
        (10, True)
    """
    __tracebackhide__ = True
    from . import oracle  # the oracle's checks of calls, outputs and inputs

    if not callable(fn):
        raise BoRAValueError(f"fn must be callable as fn(x, B, A, sigma), got {fn!r}")
    if not isinstance(grad, (bool, np.bool_)):
        raise BoRAValueError(f"grad must be True or False, got {grad!r}")
    grad = bool(grad)
    dev = oracle._check_device(device)
    if timeout is not None:
        timeout = oracle.check_positive_float("timeout", timeout)
    base = _directory(directory)
    entries = read_manifest(base)["files"]
    names = [e["file"] for e in entries]
    if files is not None:
        if isinstance(files, str) or not isinstance(files, (list, tuple)) or not files:
            raise BoRAValueError(f"files must be a non-empty list of golden file names, got {files!r}")
        for name in files:
            if name not in names:
                raise BoRAValueError(f"files must name golden files of {names}, got {name!r}")
        entries = [e for e in entries if e["file"] in files]
    problems = verify_golden(base)
    if problems:
        raise BoRAValueError(f"directory {str(base)!r} must hold intact golden files; verification found: "
                             + "; ".join(problems))

    comparisons: list[Comparison] = []
    failures: list[tuple[str, str, BaseException | None]] = []
    for entry in entries:
        arrays = load_golden(entry["file"], base)
        dtype = getattr(torch, entry["dtype"])
        case = _entry_case(entry)
        try:
            found = _golden_run(fn, case, arrays, dtype, dev, grad, GOLDEN_RTOL[entry["dtype"]], timeout)
        except oracle._Misbehaved as exc:
            failures.append((entry["file"], str(exc), exc.__cause__))
            continue
        comparisons += found
        bad = [c for c in found if not c.passed]
        if bad:
            failures.append((entry["file"], oracle._describe_error(bad[0], calls=False), None))
    report = OracleReport(tuple(comparisons), str(dev), grad, GOLDEN_SEED)
    if failures:
        fn_line = oracle._import_line(fn) or "fn = ...  # your implementation"
        dir_arg = "" if directory is None else f", directory={str(base)!r}"
        lines = [f"bora_ref golden: {len(failures)} of {len(entries)} golden files failed on {dev} (grad={grad}; "
                 f"bar per array: max |got - truth| <= rtol x max |truth|, rtol {GOLDEN_RTOL})"]
        for name, problem, _ in failures:
            lines += [f"  {name}: {problem}",
                      f"    replay: from bora_ref.testing import check_golden; {fn_line}; "
                      f"check_golden(fn, grad={grad}, files=[{name!r}]{dir_arg}, device={str(dev)!r})"]
        first = next(e for e in entries if e["file"] == failures[0][0])
        raise OracleFailure("\n".join(lines), _entry_case(first), getattr(torch, first["dtype"]),
                            report) from failures[0][2]
    return report


def _entry_case(entry: dict) -> OracleCase:
    return OracleCase(entry["case"], entry["m"], entry["n"], entry["r"], entry["b"], lead=tuple(entry["x_shape"][:-1]))


def _golden_run(
    fn: Callable, case: OracleCase, arrays: dict[str, np.ndarray], dtype: torch.dtype, device: torch.device,
    grad: bool, rtol: float, timeout: float | None,
) -> list[Comparison]:
    """One call of ``fn`` (and one backward) on a golden file's inputs; one comparison per array."""
    from . import oracle

    inputs = [torch.from_numpy(arrays[k]).to(device).requires_grad_(grad) for k in ("x", "B", "A", "sigma")]
    before = [t.detach().clone() for t in inputs]
    y = oracle._call("the implementation", timeout, lambda: fn(*inputs))
    oracle._check_output("the output y", y, tuple(arrays["y"].shape), inputs[0])
    oracle._check_unchanged(inputs, before, 0)
    got = {"y": y}
    if grad:
        if not y.requires_grad:
            raise oracle._Misbehaved("the output does not require grad: fn detached it or ran under no_grad")
        g = torch.from_numpy(arrays["g"]).to(device)
        grads = oracle._call("backward through the implementation", timeout,
                             lambda: torch.autograd.grad(y, inputs, g, allow_unused=True))
        for name, t, gr in zip(("x", "B", "A", "sigma"), inputs, grads):
            if gr is None:
                raise oracle._Misbehaved(f"the gradient w.r.t. {name} is None: y does not depend on {name}")
            oracle._check_output(f"the gradient w.r.t. {name}", gr, tuple(t.shape), t)
            got[f"grad {name}"] = gr
    out = []
    for quantity in QUANTITIES if grad else QUANTITIES[:1]:
        want = arrays[quantity.replace(" ", "_")]
        error, index, got_value, true_value = oracle._max_abs_error(got[quantity], want)
        max_truth = float(np.abs(want).max()) if want.size else 0.0
        rule = f"golden {dtype_name(dtype)}: {rtol:g} x max |truth| {max_truth:.3e}"
        out.append(Comparison(case, dtype, quantity, error, max_truth, None, rtol * max_truth, rule, index,
                              got_value, true_value))
    return out
