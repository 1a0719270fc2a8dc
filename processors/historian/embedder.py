"""Sentence embeddings from a model shipped inside a PyPI package, on CPU, with no network.

:class:`WordLlamaEmbedder` uses ``wordllama`` (static token embeddings distilled from an LLM's
embedding table, averaged and L2-normalised; numpy only). Its wheel ships the 256-dimension
``l2_supercat`` weights and its tokenizer; the package's own loader looks for the tokenizer under
``wordllama/tokenizer/`` but the wheel has it under ``wordllama/tokenizers/``, and then tries to
download it. Passing the package folder as the cache folder (whose tokenizer sub-folder *is*
``tokenizers/``) with downloads disabled makes it read both files from the wheel, or fail loudly:
the historian never reaches for the network (ADR 0034).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, Protocol

import numpy as np

from foundation.errors import ConfigurationError, NonRetryableError

__all__ = [
    "DIMENSIONS",
    "MODEL",
    "Embedder",
    "EmbeddingError",
    "WordLlamaEmbedder",
    "default_embedder",
    "to_pgvector",
]

MODEL: Final = "wordllama/l2_supercat_256"
"""Stored next to every embedding: vectors of different models must never be compared."""
DIMENSIONS: Final = 256


class EmbeddingError(NonRetryableError):
    """A text has no vector (blank: no tokens, so no average to normalise). Permanent: the
    historian dead-letters the record instead of storing a vector that matches nothing."""

    error_class = "Embedding"


class Embedder(Protocol):
    model: str
    dimensions: int

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One unit-length vector per text."""
        ...


class WordLlamaEmbedder:
    """``wordllama``'s l2_supercat model at 256 dimensions, loaded from the installed wheel."""

    model = MODEL
    dimensions = DIMENSIONS

    def __init__(self) -> None:
        try:
            import wordllama
            from wordllama import WordLlama
        except ImportError as exc:  # pragma: no cover - a broken install
            raise ConfigurationError(
                "Expected the wordllama package (pinned in constraints.txt) to be installed"
            ) from exc
        package = Path(wordllama.__file__).parent
        try:
            self._model: Any = WordLlama.load(
                config="l2_supercat", dim=DIMENSIONS, cache_dir=package, disable_download=True
            )
        except FileNotFoundError as exc:
            raise ConfigurationError(
                f"Expected wordllama's l2_supercat weights and tokenizer in {package}, but: {exc}"
            ) from exc
        # The tokenizer is a Rust object shared by the API's threads and the projector's: one
        # call at a time keeps it simple (an embedding takes ~0.1 ms).
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        blank = [i for i, text in enumerate(texts) if not text.strip()]
        if blank:
            raise EmbeddingError(f"Expected texts to embed, but texts {blank} are blank")
        with self._lock:
            vectors = self._model.embed(list(texts), norm=True)
        finite = np.isfinite(vectors).all(axis=1)
        if not finite.all():
            bad = [i for i, ok in enumerate(finite.tolist()) if not ok]
            raise EmbeddingError(f"Expected unit vectors, but texts {bad} have no known token")
        rows: list[list[float]] = vectors.tolist()
        return rows


_DEFAULT: list[WordLlamaEmbedder] = []
_DEFAULT_LOCK: Final = threading.Lock()


def default_embedder() -> WordLlamaEmbedder:
    """One model per process (16 MB of weights, loaded in ~0.1 s)."""
    with _DEFAULT_LOCK:
        if not _DEFAULT:
            _DEFAULT.append(WordLlamaEmbedder())
        return _DEFAULT[0]


def to_pgvector(vector: Sequence[float]) -> str:
    """pgvector's text form, ``[0.1,0.2,...]``, cast with ``::vector`` in SQL (no type
    registration per connection needed)."""
    return "[" + ",".join(f"{x:.7g}" for x in vector) + "]"
