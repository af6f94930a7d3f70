"""``bora-ref check MODULE:FUNCTION`` (run the oracle, or the golden vectors, on your kernel) and ``bora-ref golden``."""

from __future__ import annotations

import argparse
import importlib
import math
import os
import re
import sys
from collections.abc import Callable

from .._validation import BoRAValueError
from .cases import _FLOAT_DTYPES, FACTOR_KINDS, LAYOUTS, OracleCase, get_case
from .golden import GOLDEN_RTOL, check_golden, golden_dir, read_manifest, verify_golden, write_golden
from .oracle import DEFAULT_FLOOR, DEFAULT_K, FLOAT64_RTOL, _validated, check_implementation
from .results import OracleFailure, dtype_name

__all__ = ["register", "load_function", "parse_case", "KernelExited"]

_DTYPES = {dtype_name(d): d for d in _FLOAT_DTYPES}
_DEFAULT_DTYPES = tuple(dtype_name(d) for d in check_implementation.__kwdefaults__["dtypes"])  # the oracle's default
_PACKAGED = "(packaged)"  # --golden without a directory
#: Largest custom case the command line accepts: float64 entries of ΔW (m n) plus x and y (N (m + n)),
#: which the reference materialises; 2**27 entries is 1 GiB.
MAX_CASE_ENTRIES = 2**27
_CASE_RE = re.compile(r"^\d+,\d+,\d+,\d+(,[^,]*)?(,[^,]*)?(,[^,]*)?$")


class KernelExited(Exception):
    """Importing the kernel's module raised ``SystemExit`` (or another non-``Exception`` BaseException)."""


def load_function(target: str) -> Callable:
    """Import ``MODULE:FUNCTION`` (``FUNCTION`` may be dotted) with the current directory on ``sys.path``.

    Raises:
        BoRAValueError: ``target`` is not of that form, the module cannot be imported (any exception
            while importing it, ``SyntaxError`` included), or it has no such callable attribute.
        KernelExited: importing the module raised ``SystemExit`` or another ``BaseException`` that is
            not an ``Exception`` (``KeyboardInterrupt`` propagates).
    """
    if not isinstance(target, str):
        raise BoRAValueError(f"target must be a string MODULE:FUNCTION, got {target!r}")
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise BoRAValueError(f"target must look like MODULE:FUNCTION (e.g. my_kernels:bora_matmul), got {target!r}")
    if os.getcwd() not in sys.path:  # like `python -m`: the user's own modules are found from where they stand
        sys.path.insert(0, os.getcwd())
    try:
        obj = importlib.import_module(module_name)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # ImportError, SyntaxError, or whatever the module's top level raised
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise BoRAValueError(f"target {target!r}: cannot import module {module_name!r}: {reason}") from None
    except BaseException as exc:  # SystemExit at import time: a failure, never a silent pass
        raise KernelExited(f"importing module {module_name!r} raised {type(exc).__name__}"
                           f"{': ' + str(exc) if str(exc) else ''}; the module must define the kernel, "
                           "not exit") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            owner = getattr(obj, "__name__", repr(obj))
            raise BoRAValueError(f"target {target!r}: {owner} has no attribute {part!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise BoRAValueError(f"target {target!r} must name a callable, got a {type(obj).__name__}")
    return obj


def parse_case(text: str) -> OracleCase:
    """A built-in case name, or ``m,n,r,b[,LEAD[,LAYOUT[,FACTORS]]]`` for a custom case.

    ``LEAD`` is the leading dimensions of ``x`` joined by ``x`` (``2x128`` gives ``x (2, 128, n)``;
    empty gives ``x (n,)``; default ``6``); ``LAYOUT`` and ``FACTORS`` as in
    [`OracleCase`][bora_ref.testing.OracleCase] (default ``contiguous``, ``gaussian``).

    Raises:
        BoRAValueError: an unknown name, a malformed or invalid spec, or a case larger than
            ``MAX_CASE_ENTRIES`` float64 entries.
    """
    text = text.strip()
    if not _CASE_RE.match(text):
        return get_case(text)
    fields = text.split(",")
    m, n, r, b = (int(f) for f in fields[:4])
    lead_text = fields[4].strip() if len(fields) > 4 else "6"
    if lead_text and not re.fullmatch(r"\d+(x\d+)*", lead_text):
        raise BoRAValueError(f"case {text!r}: LEAD must be sizes joined by 'x' (e.g. 2x128) or empty, got {lead_text!r}")
    lead = tuple(int(d) for d in lead_text.split("x")) if lead_text else ()
    layout = fields[5].strip() if len(fields) > 5 else "contiguous"
    factors = fields[6].strip() if len(fields) > 6 else "gaussian"
    if layout not in LAYOUTS:
        raise BoRAValueError(f"case {text!r}: LAYOUT must be one of {LAYOUTS}, got {layout!r}")
    if factors not in FACTOR_KINDS:
        raise BoRAValueError(f"case {text!r}: FACTORS must be one of {FACTOR_KINDS}, got {factors!r}")
    tokens = math.prod(lead)
    entries = m * n + tokens * (m + n)
    if entries > MAX_CASE_ENTRIES:
        raise BoRAValueError(f"case {text!r} needs {entries} float64 entries for ΔW, x and y, more than the "
                             f"{MAX_CASE_ENTRIES} (1 GiB) the command line allows; use check_implementation "
                             "from Python for larger cases")
    name = f"cli-{m}x{n}-r{r}-b{b}" + (f"-x{lead_text}" if lead != (6,) else "")
    try:
        return OracleCase(name, m, n, r, b, lead=lead, layout=layout, factors=factors)
    except BoRAValueError as exc:
        raise BoRAValueError(f"case {text!r}: {exc}") from None


def _kernel(target: str) -> Callable | None:
    try:
        return load_function(target)
    except KernelExited as exc:
        print(f"FAILED {target}")
        print(f"bora_ref oracle: {exc}")
        return None


def _run_check(args: argparse.Namespace) -> int:
    target, golden = args.target, args.golden
    if target is None and golden not in (None, _PACKAGED) and ":" in golden and not os.path.isdir(golden):
        target, golden = golden, _PACKAGED  # `check --golden MODULE:FN`: the flag took the target
    if target is None:
        raise BoRAValueError("target MODULE:FUNCTION is required (e.g. bora-ref check my_kernels:bora_matmul)")
    if golden is not None:
        return _run_golden_check(args, target, None if golden == _PACKAGED else golden)
    cases = [parse_case(c) for c in args.case] if args.case else None
    dtypes = [_DTYPES[d] for d in (args.dtype or _DEFAULT_DTYPES)]
    # every argument is checked before the user's module is imported
    _validated(print, dtypes, args.device, args.grad, args.seed, cases, args.k, args.floor, args.rtol_float64,
               args.collect, args.timeout, ())
    fn = _kernel(target)
    if fn is None:
        return 1
    try:
        report = check_implementation(
            fn, dtypes=dtypes, device=args.device, grad=args.grad, seed=args.seed, cases=cases,
            k=args.k, floor=args.floor, rtol_float64=args.rtol_float64, collect=args.collect, timeout=args.timeout,
        )
    except OracleFailure as exc:
        if exc.report.comparisons:
            print(exc.report.table())
            print()
        print(f"FAILED {target}")
        print(exc)
        return 1
    print(report.table())
    print()
    print(f"PASSED {target}: {report}")
    return 0


def _run_golden_check(args: argparse.Namespace, target: str, directory: str | None) -> int:
    if args.case or args.dtype:
        raise BoRAValueError("--golden checks every golden file in its stored dtype; drop --case and --dtype")
    read_manifest(directory)  # the directory is checked before the user's module is imported
    fn = _kernel(target)
    if fn is None:
        return 1
    try:
        report = check_golden(fn, grad=not args.forward_only, directory=directory, device=args.device,
                              timeout=args.timeout)
    except OracleFailure as exc:
        print(f"FAILED {target}")
        print(exc)
        return 1
    print(report.table())
    print()
    where = directory if directory is not None else golden_dir()
    print(f"PASSED {target}: {report.cases_run} golden files in {where}, "
          f"{'outputs and gradients' if report.grad else 'outputs'} within rtol {GOLDEN_RTOL} x max |truth|")
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
        "check", help="run the BoRA oracle (or the golden vectors) on your kernel MODULE:FUNCTION",
        description="Import FUNCTION from MODULE (the current directory is on the path) and check that "
        "FUNCTION(x, B, A, sigma) computes x @ dW.T on the built-in cases (each called twice, on fresh inputs), "
        "or with --golden on every golden file (forward and gradients). Prints a table; exits 0 when all "
        "pass, 1 on a failure (the kernel raised, exited, timed out or erred), 2 when the command is wrong.",
    )
    p.add_argument("target", nargs="?", metavar="MODULE:FUNCTION", help="e.g. my_kernels:bora_matmul")
    p.add_argument("--dtype", action="append", choices=sorted(_DTYPES),
                   help=f"dtype to check (repeat for several; default: {', '.join(_DEFAULT_DTYPES)})")
    p.add_argument("--device", default="cpu", help="torch device the function runs on (default: cpu)")
    p.add_argument("--grad", action="store_true", help="also check gradients w.r.t. x, B, A and sigma")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default: 0)")
    p.add_argument("--case", action="append", metavar="NAME|m,n,r,b[,LEAD[,LAYOUT[,FACTORS]]]",
                   help="run only this case (repeatable): a built-in name, or a custom shape such as "
                   "4096,4096,16,8,2x128 (LEAD: leading dims of x joined by 'x', empty for x (n,), default 6)")
    p.add_argument("--collect", action="store_true", help="run every case and report all failures, not just the first")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="fail a call (or backward) of the function that takes longer than this")
    p.add_argument("--golden", nargs="?", const=_PACKAGED, default=None, metavar="DIR",
                   help="check against the golden vectors instead (the packaged ones, or those in DIR): output and "
                   "all four gradients of every file, bar max |err| <= 1e-10 (float64) or 1e-5 (float32) x max |truth|")
    p.add_argument("--forward-only", action="store_true", help="with --golden: skip the gradients")
    p.add_argument("--k", type=float, default=DEFAULT_K,
                   help=f"low precision: allowed multiple of the naive baseline's error (default: {DEFAULT_K:g})")
    p.add_argument("--floor", type=float, default=DEFAULT_FLOOR,
                   help=f"low precision: error floor, in roundings of the result's scale (default: {DEFAULT_FLOOR:g})")
    p.add_argument("--rtol-float64", type=float, default=FLOAT64_RTOL,
                   help=f"float64 tolerance relative to max |truth| (default: {FLOAT64_RTOL:g})")
    p.set_defaults(func=_run_check)

    g = sub.add_parser("golden", help="verify (or --regenerate) the packaged golden vectors",
                       description="Check the golden .npz files against their manifest and the NumPy reference.")
    g.add_argument("--regenerate", action="store_true", help="rewrite the files and manifest first")
    g.add_argument("--dir", default=None, help="directory of the golden files (default: the packaged ones)")
    g.set_defaults(func=_run_golden)
