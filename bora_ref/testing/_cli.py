"""``bora-ref check MODULE:FUNCTION`` (run the oracle on your kernel) and ``bora-ref golden``."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable

import torch

from .._validation import BoRAValueError
from .golden import golden_dir, verify_golden, write_golden
from .oracle import DEFAULT_FLOOR, DEFAULT_K, FLOAT64_RTOL, check_implementation
from .results import OracleFailure

__all__ = ["register", "load_function"]

_DTYPES = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_DEFAULT_DTYPES = ("float64", "float32", "bfloat16")


def load_function(target: str) -> Callable:
    """Import ``MODULE:FUNCTION`` (``FUNCTION`` may be dotted) with the current directory on ``sys.path``.

    Raises:
        BoRAValueError: ``target`` is not of that form, the module cannot be imported, or it has no such
            callable attribute.
    """
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise BoRAValueError(f"target must look like MODULE:FUNCTION (e.g. my_kernels:bora_matmul), got {target!r}")
    if os.getcwd() not in sys.path:  # like `python -m`: the user's own modules are found from where they stand
        sys.path.insert(0, os.getcwd())
    try:
        obj = importlib.import_module(module_name)
    except ImportError as exc:
        raise BoRAValueError(f"target {target!r}: cannot import module {module_name!r}: {exc}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            owner = getattr(obj, "__name__", repr(obj))
            raise BoRAValueError(f"target {target!r}: {owner} has no attribute {part!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise BoRAValueError(f"target {target!r} must name a callable, got a {type(obj).__name__}")
    return obj


def _run_check(args: argparse.Namespace) -> int:
    fn = load_function(args.target)
    dtypes = [_DTYPES[d] for d in (args.dtype or _DEFAULT_DTYPES)]
    try:
        report = check_implementation(
            fn, dtypes=dtypes, device=args.device, grad=args.grad, seed=args.seed, cases=args.case,
            k=args.k, floor=args.floor, rtol_float64=args.rtol_float64,
        )
    except OracleFailure as exc:
        if exc.report.comparisons:
            print(exc.report.table())
            print()
        print(f"FAILED {args.target}")
        print(exc)
        return 1
    print(report.table())
    print()
    print(f"PASSED {args.target}: {report}")
    return 0


def _run_golden(args: argparse.Namespace) -> int:
    directory = args.dir if args.dir is not None else golden_dir()
    if args.regenerate:
        manifest = write_golden(directory)
        for entry in manifest["files"]:
            print(f"wrote {entry['file']}  sha256 {entry['sha256']}")
    problems = verify_golden(directory)
    for line in problems:
        print(line)
    print(f"golden vectors in {directory}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
    return 1 if problems else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check", help="run the BoRA oracle on your kernel MODULE:FUNCTION",
        description="Import FUNCTION from MODULE (the current directory is on the path) and check that "
        "FUNCTION(x, B, A, sigma) computes x @ dW.T on the built-in cases. Prints a table; exits 1 on failure.",
    )
    p.add_argument("target", metavar="MODULE:FUNCTION", help="e.g. my_kernels:bora_matmul")
    p.add_argument("--dtype", action="append", choices=sorted(_DTYPES),
                   help=f"dtype to check (repeat for several; default: {', '.join(_DEFAULT_DTYPES)})")
    p.add_argument("--device", default="cpu", help="torch device the function runs on (default: cpu)")
    p.add_argument("--grad", action="store_true", help="also check gradients w.r.t. x, B, A and sigma")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default: 0)")
    p.add_argument("--case", action="append", metavar="NAME", help="run only this built-in case (repeatable)")
    p.add_argument("--k", type=float, default=DEFAULT_K,
                   help=f"low precision: allowed multiple of the naive baseline's error (default: {DEFAULT_K:g})")
    p.add_argument("--floor", type=float, default=DEFAULT_FLOOR,
                   help=f"low precision: error floor in eps x root-sum-square of terms (default: {DEFAULT_FLOOR:g})")
    p.add_argument("--rtol-float64", type=float, default=FLOAT64_RTOL,
                   help=f"float64 tolerance relative to max |truth| (default: {FLOAT64_RTOL:g})")
    p.set_defaults(func=_run_check)

    g = sub.add_parser("golden", help="verify (or --regenerate) the packaged golden vectors",
                       description="Check the golden .npz files against their manifest and the NumPy reference.")
    g.add_argument("--regenerate", action="store_true", help="rewrite the files and manifest first")
    g.add_argument("--dir", default=None, help="directory of the golden files (default: the packaged ones)")
    g.set_defaults(func=_run_golden)
