"""The packaged golden vectors: manifest, hashes, and agreement with the NumPy reference."""

from __future__ import annotations

import hashlib
import re
import json
import shutil

import numpy as np
import pytest
import torch

from bora_ref import block_sizes, numpy_ref
from bora_ref.testing import get_case
from bora_ref.testing.golden import GOLDEN_CASES, GOLDEN_FORMAT_VERSION, golden_arrays, golden_dir, load_golden, read_manifest, verify_golden, write_golden


def test_packaged_files_verify_clean():
    assert verify_golden() == []


def test_manifest_lists_exactly_the_files_with_their_metadata():
    manifest = read_manifest()
    entries = manifest["files"]
    assert len(entries) == len(GOLDEN_CASES)
    on_disk = sorted(p.name for p in golden_dir().iterdir())
    assert on_disk == sorted([e["file"] for e in entries] + ["manifest.json"])
    assert sum(p.stat().st_size for p in golden_dir().iterdir()) < 200_000  # small: well under 1 MB
    for e in entries:
        case = get_case(e["case"])
        assert (e["m"], e["n"], e["r"], e["b"]) == (case.m, case.n, case.r, case.b)
        assert e["row_blocks"] == list(block_sizes(case.m, case.b)) and e["col_blocks"] == list(block_sizes(case.n, case.b))
        assert e["sha256"] == hashlib.sha256((golden_dir() / e["file"]).read_bytes()).hexdigest()
        arrays = load_golden(e["file"])
        assert arrays["x"].shape == tuple(e["x_shape"]) == case.x_shape and str(arrays["x"].dtype) == e["dtype"]
        assert arrays["sigma"].shape == (case.b, case.b, case.r) and arrays["y"].shape == case.y_shape
        assert arrays["y"].dtype == np.float64 and e["seed"] == 0


def test_stored_truth_is_the_reference_on_the_stored_inputs():
    for e in read_manifest()["files"]:
        a = load_golden(e["file"])
        x, B, A, sigma = (a[k].astype(np.float64) for k in ("x", "B", "A", "sigma"))
        y = numpy_ref.bora_matmul(x, B, A, sigma)
        np.testing.assert_allclose(a["y"], y, rtol=1e-12, atol=1e-12 * np.abs(y).max(), err_msg=e["file"])
        dw = numpy_ref.delta_weight(B, A, sigma)
        np.testing.assert_allclose(a["delta_weight"], dw, rtol=1e-12, atol=1e-12 * np.abs(dw).max())
        gx = a["g"].astype(np.float64) @ dw  # gradient of sum(g * y) w.r.t. x
        np.testing.assert_allclose(a["grad_x"], gx, rtol=1e-12, atol=1e-12 * np.abs(gx).max())


def test_regenerating_reproduces_the_packaged_inputs_and_is_byte_deterministic(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    m1, m2 = write_golden(first), write_golden(second)
    assert [e["sha256"] for e in m1["files"]] == [e["sha256"] for e in m2["files"]]
    assert [e["file"] for e in m1["files"]] == [e["file"] for e in read_manifest()["files"]]
    assert verify_golden(first) == []
    for e in m1["files"]:
        new, old = load_golden(e["file"], first), load_golden(e["file"])
        for key in ("x", "B", "A", "sigma", "g"):
            np.testing.assert_array_equal(new[key], old[key])  # same seed, same inputs
        for key in ("y", "delta_weight", "grad_x", "grad_B", "grad_A", "grad_sigma"):
            np.testing.assert_allclose(new[key], old[key], rtol=1e-12, atol=1e-12 * np.abs(old[key]).max())


def test_verification_catches_tampering(tmp_path):
    shutil.copytree(golden_dir(), tmp_path, dirs_exist_ok=True)
    name = read_manifest()["files"][1]["file"]
    a = load_golden(name, tmp_path)
    a["y"][0, 0] += 1e-6
    np.savez(tmp_path / name, **a)
    problems = verify_golden(tmp_path)
    assert len(problems) == 2
    assert problems[0].startswith(f"{name}: SHA-256 ") and "differs from the manifest's" in problems[0]
    assert problems[1].startswith(f"{name}: y differs from the reference by 1.000e-06")
    # fix the hash: the content error remains
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["files"][1]["sha256"] = hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert verify_golden(tmp_path) == [problems[1]]
    (tmp_path / name).unlink()
    assert verify_golden(tmp_path) == [f"{name}: listed in the manifest but missing"]


def test_bad_requests_are_rejected():
    with pytest.raises(ValueError, match=r"file must be one of the golden files .* got 'nope.npz'"):
        load_golden("nope.npz")
    with pytest.raises(ValueError, match=r"dtype must have a NumPy equivalent for .npy files, got torch.bfloat16"):
        golden_arrays(get_case("b=1"), torch.bfloat16)


def test_check_golden_passes_correct_kernels_and_fails_planted_bugs():
    from bora_ref import torch_ref
    from bora_ref.testing import GOLDEN_RTOL, OracleFailure, check_golden

    from . import kernels

    for fn in (torch_ref.bora_matmul, kernels.loop_bora_matmul, kernels.custom_backward_bora_matmul):
        report = check_golden(fn)
        assert report.cases_run == len(GOLDEN_CASES) and len(report.comparisons) == 5 * len(GOLDEN_CASES)
        assert all(c.passed for c in report.comparisons)
        assert all(c.tolerance == GOLDEN_RTOL[str(c.dtype).removeprefix("torch.")] * c.max_abs_truth
                   for c in report.comparisons)
    with pytest.raises(OracleFailure) as info:
        check_golden(kernels.sigma_transposed)
    assert str(info.value).startswith(f"bora_ref golden: {len(GOLDEN_CASES) - 0} of {len(GOLDEN_CASES)} golden files failed")
    # a gradient-only bug: passes the forward, fails with the (default) gradients
    check_golden(kernels.wrong_sigma_grad, grad=False)
    with pytest.raises(OracleFailure, match=r"the gradient w.r.t. sigma differs from the float64 NumPy reference"):
        check_golden(kernels.wrong_sigma_grad)
    # a float32 detour fails exactly the float64 files
    with pytest.raises(OracleFailure) as info:
        check_golden(kernels.float32_roundtrip)
    failed = re.findall(r"^  (\S+\.npz): ", str(info.value), re.M)
    assert failed == [e["file"] for e in read_manifest()["files"] if e["dtype"] == "float64"]
    with pytest.raises(OracleFailure, match=r"x-4d-float64.npz: the output y has shape \(2, 12, 10\)"):
        check_golden(kernels.keeps_first_leading_dim)
    with pytest.raises(OracleFailure, match=r"raised SystemExit") as info:
        check_golden(kernels.exits, files=["x-4d-float64.npz"])
    assert isinstance(info.value.__cause__, SystemExit)


def test_check_golden_replay_line_runs_one_file():
    from bora_ref.testing import OracleFailure, check_golden

    from . import kernels

    with pytest.raises(OracleFailure) as info:
        check_golden(kernels.keeps_first_leading_dim)
    line = re.search(r"replay: (.*)$", str(info.value), re.M).group(1)
    with pytest.raises(OracleFailure) as again:
        exec(line, {})
    assert str(again.value).startswith("bora_ref golden: 1 of 1 golden files failed")


def test_check_golden_refuses_bad_directories_and_arguments(tmp_path):
    from bora_ref import torch_ref
    from bora_ref.testing import check_golden

    with pytest.raises(ValueError, match=r"directory must be an existing directory of golden files"):
        check_golden(torch_ref.bora_matmul, directory=tmp_path / "missing")
    with pytest.raises(ValueError, match=r"directory must hold a manifest.json"):
        check_golden(torch_ref.bora_matmul, directory=tmp_path)
    (tmp_path / "manifest.json").write_text("[" * 100_000)
    with pytest.raises(ValueError, match=r"must be valid JSON"):
        check_golden(torch_ref.bora_matmul, directory=tmp_path)
    with pytest.raises(ValueError, match=r"files must name golden files of .* got 'nope.npz'"):
        check_golden(torch_ref.bora_matmul, files=["nope.npz"])
    with pytest.raises(ValueError, match=r"grad must be True or False, got 'yes'"):
        check_golden(torch_ref.bora_matmul, grad="yes")
    tampered = tmp_path / "t"
    shutil.copytree(golden_dir(), tampered)
    (tampered / "x-4d-float64.npz").write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"must hold intact golden files; verification found: x-4d-float64.npz"):
        check_golden(torch_ref.bora_matmul, directory=tampered)


def _copy_with_manifest(tmp_path, edit):
    """A copy of the packaged golden files whose manifest is ``edit(manifest)``, written by hand."""
    shutil.copytree(golden_dir(), tmp_path, dirs_exist_ok=True)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    edit(manifest)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return tmp_path


def test_manifest_records_format_version_and_split_rule():
    manifest = read_manifest()
    assert (manifest["format_version"], manifest["split_rule"]) == (GOLDEN_FORMAT_VERSION, "array_split") == (2, "array_split")


def test_a_version_1_manifest_without_the_fields_is_read_as_array_split(tmp_path):
    def as_version_1(m):
        del m["format_version"], m["split_rule"]
        m["format"] = "bora_ref golden vectors 1"  # how version 1 manifests named their version

    base = _copy_with_manifest(tmp_path, as_version_1)
    assert "split_rule" not in json.loads((base / "manifest.json").read_text())
    assert verify_golden(base) == []
    name = read_manifest(base)["files"][0]["file"]
    for key, value in load_golden(name).items():
        np.testing.assert_array_equal(load_golden(name, base)[key], value)


def _set(**fields):
    return lambda m: m.update(fields)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (_set(split_rule="equal-last"), r"manifest '.*manifest.json' has split_rule='equal-last' \(format_version=2\); "
                                        r"this bora_ref cuts blocks by the 'array_split' rule only"),
        (lambda m: m.pop("split_rule"), r"has split_rule='<missing>' \(format_version=2\); .*'array_split' rule"),
        (_set(format_version=3), r"manifest '.*manifest.json' has format_version=3; this bora_ref reads format versions 1, 2"),
        (lambda m: m.pop("format_version"), r"has format_version='<missing>'; this bora_ref reads format versions 1, 2"),
        (_set(format_version=True), r"has format_version=True"),
        (lambda m: (m.pop("format_version"), m.update(format="bora_ref golden vectors 1", split_rule="x")),
         r"has split_rule='x' \(format_version=1\)"),
    ],
    ids=["other-rule", "no-rule", "newer-version", "no-version", "bool-version", "v1-other-rule"],
)
def test_manifests_of_another_split_rule_or_version_are_refused_and_left_alone(tmp_path, edit, match):
    from bora_ref import BoRAValueError, torch_ref
    from bora_ref.testing import check_golden

    base = _copy_with_manifest(tmp_path, edit)
    before = {p.name: p.read_bytes() for p in base.iterdir()}
    name = read_manifest()["files"][0]["file"]
    for call in (lambda: read_manifest(base), lambda: verify_golden(base), lambda: load_golden(name, base),
                 lambda: check_golden(torch_ref.bora_matmul, directory=base)):
        with pytest.raises(BoRAValueError, match=match):
            call()
    assert {p.name: p.read_bytes() for p in base.iterdir()} == before


def test_verification_catches_block_sizes_of_another_rule(tmp_path):
    entry = next(e for e in read_manifest()["files"] if e["m"] % e["b"])  # an uneven split
    name, row_blocks = entry["file"], entry["row_blocks"]
    ascending = sorted(row_blocks)  # the same sizes, smaller blocks first: not array_split

    def edit(m):
        next(e for e in m["files"] if e["file"] == name)["row_blocks"] = ascending

    base = _copy_with_manifest(tmp_path, edit)
    assert verify_golden(base) == [f"{name}: row_blocks={ascending} col_blocks={entry['col_blocks']} are not the "
                                   f"array_split blocks {row_blocks} and {entry['col_blocks']}"]
