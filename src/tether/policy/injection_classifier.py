"""An optional prompt-injection classifier (sentence embeddings + word hashing, ridge) and its check.

The rules (`tether.policy.injection`) stay first; this catches plain-language attacks with no marker word.
It needs the semantic extra (numpy and the offline MiniLM embedder); importing this module does not.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tether.errors import ConfigurationError
from tether.gateway.embeddings import Embedder, HashingEmbedder, default_embedder
from tether.policy.guardrails import WITHHELD, Action, Source, Verdict

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    Matrix = npt.NDArray[np.float64]

__all__ = ["ClassifierCheck", "InjectionClassifier"]

SEMANTIC_EXTRA = "pip install -e '.[semantic]'"
# Measured on the dev split: 8 texts per batch, sorted by length, embeds fastest (less padding; larger
# int8 batches were slower per text on one thread).
_BATCH = 8
_FOLDS = 5


class InjectionClassifier:
    """Scores how much a text reads like a prompt injection; `fit` on labelled texts first.

    Features: the MiniLM sentence embedding (what a text asks for) next to a 1,024-wide word and
    character n-gram hashing (its wording): on the dev split the pair caught about twice the attacks of
    the embedding alone at 1% false positives. The model is ridge regression on targets ±1, solved in
    closed form (milliseconds); `fit` also sets `threshold` from out-of-fold scores of the benign texts
    so that about `max_false_positive_rate` of them would be flagged.
    """

    def __init__(
        self,
        embedder: Embedder | None = None,
        *,
        lexical_dimensions: int = 1024,
        l2: float = 1.0,
        max_false_positive_rate: float = 0.01,
    ) -> None:
        if importlib.util.find_spec("numpy") is None:
            raise ConfigurationError(f"the injection classifier needs numpy: {SEMANTIC_EXTRA}")
        if embedder is None:
            try:
                embedder = default_embedder()
            except ConfigurationError as exc:
                raise ConfigurationError(
                    f"the injection classifier needs the semantic extra ({SEMANTIC_EXTRA}): {exc}"
                ) from exc
        self.embedder = embedder
        self._lexical = HashingEmbedder(lexical_dimensions)
        self.l2 = l2
        self.max_false_positive_rate = max_false_positive_rate
        self.threshold: float | None = None
        self._mean: Matrix | None = None
        self._weights: Matrix | None = None
        self._bias = 0.0

    @classmethod
    def from_corpus(
        cls, path: str | Path, split: str | None = "dev", embedder: Embedder | None = None
    ) -> InjectionClassifier:
        """Fitted on a JSON-lines corpus (`text`, `label` "attack" | "benign", `split`); None: every split."""
        rows = [
            json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()
        ]
        rows = [row for row in rows if split is None or row["split"] == split]
        return cls(embedder).fit([row["text"] for row in rows], [row["label"] == "attack" for row in rows])

    @property
    def is_fitted(self) -> bool:
        return self._weights is not None

    def fit(self, texts: Sequence[str], labels: Sequence[bool]) -> InjectionClassifier:
        """Learn from texts labelled True (attack) or False (benign); sets `threshold`. Returns self."""
        import numpy as np

        if len(texts) != len(labels):
            raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
        targets = np.where(np.asarray(labels, dtype=bool), 1.0, -1.0)
        if len(set(targets.tolist())) < 2 or min((targets > 0).sum(), (targets < 0).sum()) < _FOLDS:
            raise ValueError(f"fit needs at least {_FOLDS} texts of each label")
        features = self._features(texts)
        # Out-of-fold scores, so the threshold reflects texts the model has not seen (on its own
        # training texts ridge scores are overconfident and the threshold would be far too low).
        out_of_fold = np.empty(len(texts))
        for fold in range(_FOLDS):
            held = np.arange(len(texts)) % _FOLDS == fold
            mean, weights, bias = self._solve(features[~held], targets[~held])
            out_of_fold[held] = (features[held] - mean) @ weights + bias
        self._mean, self._weights, self._bias = self._solve(features, targets)
        self.threshold = _threshold(out_of_fold[targets < 0], self.max_false_positive_rate)
        return self

    def score(self, text: str) -> float:
        """The classifier's margin for one text: above `threshold` reads as an injection."""
        return self.scores([text])[0]

    def scores(self, texts: Sequence[str]) -> list[float]:
        if self._mean is None or self._weights is None:
            raise ConfigurationError("the injection classifier is not fitted: call fit() or load() first")
        if not texts:
            return []
        result: list[float] = ((self._features(texts) - self._mean) @ self._weights + self._bias).tolist()
        return result

    def save(self, path: str | Path) -> None:
        """The fitted model as a small .npz (about 24 KB), tagged with the embedder it was fitted with."""
        import numpy as np

        if self._mean is None or self._weights is None or self.threshold is None:
            raise ConfigurationError("the injection classifier is not fitted: nothing to save")
        np.savez(
            path,
            mean=self._mean,
            weights=self._weights,
            bias=self._bias,
            threshold=self.threshold,
            embedder=self.embedder.name,
            lexical_dimensions=self._lexical.dimensions,
        )

    def load(self, path: str | Path) -> InjectionClassifier:
        """Restore a model written by `save`; it must come from the same embedder. Returns self."""
        import numpy as np

        with np.load(path) as data:
            if str(data["embedder"]) != self.embedder.name:
                raise ConfigurationError(
                    f"{path} was fitted with embedder {str(data['embedder'])!r}, not {self.embedder.name!r}"
                )
            self._lexical = HashingEmbedder(int(data["lexical_dimensions"]))
            self._mean, self._weights = data["mean"], data["weights"]
            self._bias, self.threshold = float(data["bias"]), float(data["threshold"])
        return self

    def _features(self, texts: Sequence[str]) -> Matrix:
        import numpy as np

        semantic = np.zeros((len(texts), self.embedder.dimensions))
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), _BATCH):
            batch = order[start : start + _BATCH]
            semantic[batch] = self.embedder.embed([texts[i] for i in batch])
        lexical = np.array(self._lexical.embed(texts), dtype=np.float64)
        features: Matrix = np.hstack([semantic, lexical])
        return features

    def _solve(self, features: Matrix, targets: Matrix) -> tuple[Matrix, Matrix, float]:
        import numpy as np

        mean = features.mean(axis=0)
        centred = features - mean
        gram = centred.T @ centred + self.l2 * np.eye(centred.shape[1])
        weights: Matrix = np.linalg.solve(gram, centred.T @ (targets - targets.mean()))
        return mean, weights, float(targets.mean())


def _threshold(benign_scores: Matrix, max_false_positive_rate: float) -> float:
    """Halfway between the k-th and (k+1)-th highest benign score, k the benign texts allowed through."""
    ranked: list[float] = sorted(benign_scores.tolist(), reverse=True)
    allowed = int(max_false_positive_rate * len(ranked))
    if allowed == 0:
        return ranked[0] + 1e-6
    return (ranked[allowed - 1] + ranked[allowed]) / 2


@dataclass(frozen=True, slots=True)
class ClassifierCheck:
    """The classifier as a guardrail: a score at or over the threshold gets the source's action.

    It has no excerpt to cut out, so "sanitise" withholds the whole text. Put it after `InjectionCheck`:
    the rules explain what they found, and the first verdict wins.
    """

    classifier: InjectionClassifier
    threshold: float | None = None  # None: the one `fit` chose
    on_user: Action = "escalate"
    on_tool: Action = "sanitise"

    def __post_init__(self) -> None:
        if self.threshold is None and self.classifier.threshold is None:
            raise ConfigurationError("ClassifierCheck: fit the classifier first or pass a threshold")

    def __call__(self, text: str, source: Source) -> Verdict | None:
        threshold = self.threshold if self.threshold is not None else self.classifier.threshold
        assert threshold is not None  # checked in __post_init__; `fit` only ever sets it
        score = self.classifier.score(text)
        if score < threshold:
            return None
        action = self.on_user if source == "user" else self.on_tool
        sanitised = None
        if action == "sanitise":
            sanitised = WITHHELD.format(
                reason="a classifier read it as instructions addressed to the assistant"
            )
        return Verdict(
            "injection_classifier",
            action,
            f"classified as prompt injection (score {score:.2f} >= {threshold:.2f})",
            score=score,
            detail={"threshold": round(threshold, 3)},
            sanitised=sanitised,
        )
