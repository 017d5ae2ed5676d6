"""`kollm data classifier`: distil judge scores into a fast quality classifier (Trillion 7B §2).

Trillion binarises Qwen-72B's 0-5 scores at 3, trains a small multilingual embedding model on part
of them and reports F1 (0.734) on the rest. Here the labels are the same (score ≥ 3), the model is a
logistic regression (scikit-learn) over one of two feature extractors:
- "hashed": character 1-4-grams within word boundaries, hashed into 2^20 columns (scikit-learn's
  HashingVectorizer: stateless, so nothing but its parameters is saved). No model download; works
  for Korean, where character n-grams cover morphemes without a tokenizer.
- "encoder": mean-pooled last hidden states of any local Hugging Face encoder directory.
The fit reports precision, recall and F1 on a held-out split. Saved as `model.safetensors`
(weight, bias) + `classifier.json`; never pickle. `predict_proba` is a sparse dot product, which
is what makes scoring a whole corpus cheap.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from kollm.jsonrows import RowErrors, iter_rows

LABEL_THRESHOLD = 3  # judge score >= 3 is "high quality" (Trillion, FineWeb-Edu)


@dataclass
class FeatureConfig:
    kind: str = "hashed"  # hashed | encoder
    n_features: int = 2**20
    ngram_min: int = 1
    ngram_max: int = 4
    encoder: str | None = None  # Hugging Face model directory (kind == "encoder")
    max_length: int = 512
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.kind not in ("hashed", "encoder"):
            raise ValueError(f"classifier: features must be 'hashed' or 'encoder', got {self.kind!r}")
        if self.kind == "encoder" and not (self.encoder and Path(self.encoder).is_dir()):
            raise FileNotFoundError(f"classifier: encoder directory not found: {self.encoder}")


class Featurizer:
    def __init__(self, cfg: FeatureConfig):
        self.cfg = cfg
        if cfg.kind == "hashed":
            from sklearn.feature_extraction.text import HashingVectorizer

            self.vectorizer = HashingVectorizer(analyzer="char_wb", ngram_range=(cfg.ngram_min, cfg.ngram_max),
                                                n_features=cfg.n_features, alternate_sign=False, norm="l2")
        else:
            from transformers import AutoModel, AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(cfg.encoder)
            self.model = AutoModel.from_pretrained(cfg.encoder).eval()

    def __call__(self, texts: list[str]):
        if self.cfg.kind == "hashed":
            return self.vectorizer.transform(texts)
        import torch

        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.cfg.batch_size):
                enc = self.tokenizer(texts[i:i + self.cfg.batch_size], padding=True, truncation=True,
                                     max_length=self.cfg.max_length, return_tensors="pt")
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)  # mean over real tokens
                out.append(torch.nn.functional.normalize(pooled, dim=-1).float().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.model.config.hidden_size), np.float32)


class QualityClassifier:
    def __init__(self, features: FeatureConfig, weight: np.ndarray, bias: float, meta: dict | None = None):
        self.features = features
        self.weight = weight.astype(np.float32)
        self.bias = float(bias)
        self.meta = meta or {}
        self._featurize = Featurizer(features)

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """P(judge score >= 3) per text."""
        if not texts:
            return np.zeros(0, np.float32)
        logits = np.asarray(self._featurize(texts) @ self.weight).ravel() + self.bias
        return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)

    def save(self, folder: str) -> None:
        from safetensors.numpy import save_file

        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        save_file({"weight": self.weight, "bias": np.array([self.bias], np.float32)}, str(out / "model.safetensors"))
        (out / "classifier.json").write_text(json.dumps({"features": asdict(self.features), **self.meta}, indent=2))

    @classmethod
    def load(cls, folder: str) -> QualityClassifier:
        from safetensors.numpy import load_file

        path = Path(folder)
        if not (path / "classifier.json").is_file():
            raise FileNotFoundError(f"not a classifier directory (no classifier.json): {folder}")
        meta = json.loads((path / "classifier.json").read_text())
        tensors = load_file(str(path / "model.safetensors"))
        return cls(FeatureConfig(**meta.pop("features")), tensors["weight"], float(tensors["bias"][0]), meta)


def load_judged(path: str) -> tuple[list[str], list[int], RowErrors]:
    """(texts, scores, bad rows) from `judged.jsonl`; rows without an integer score 0-5 or a text
    are counted (kollm.jsonrows reasons, plus `bad_score` and `no_text`) and skipped."""
    texts, scores, errors = [], [], RowErrors()
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"judged file not found: {path}")
    for line, row, reason in iter_rows(p):
        if reason is None:
            score = row.get("score")
            if isinstance(score, bool) or not isinstance(score, int) or not 0 <= score <= 5:
                reason = "bad_score"
            elif not isinstance(row.get("text"), str):
                reason = "no_text"
        if reason is not None:
            errors.add(reason, p, line)
            continue
        texts.append(row["text"])
        scores.append(score)
    return texts, scores, errors


def precision_recall_f1(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import precision_recall_fscore_support

    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average="binary", zero_division=0)
    return {"precision": float(p), "recall": float(r), "f1": float(f), "n": int(len(y_true)),
            "positives": int(np.sum(y_true))}


def train_classifier(texts: list[str], scores: list[int], features: FeatureConfig, test_fraction: float = 0.2,
                     seed: int = 0, c: float = 10.0) -> tuple[QualityClassifier, dict]:
    from sklearn.linear_model import LogisticRegression

    y = np.array([s >= LABEL_THRESHOLD for s in scores], dtype=np.int64)
    if len(set(y.tolist())) < 2:
        raise ValueError(f"classifier: need both labels (score >= {LABEL_THRESHOLD} and below) in the judged data")
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    n_test = max(1, int(round(len(order) * test_fraction)))
    test, train = order[:n_test], order[n_test:]
    featurize = Featurizer(features)
    x_train, x_test = featurize([texts[i] for i in train]), featurize([texts[i] for i in test])
    # liblinear: ~8x faster than lbfgs on 2^20 sparse columns; C=10 because rows are L2-normalised
    # and the default C=1 underfits (train F1 0.92 vs 0.99 on the dev judged set).
    model = LogisticRegression(C=c, class_weight="balanced", solver="liblinear", max_iter=2000)
    model.fit(x_train, y[train])
    metrics = {"held_out": precision_recall_f1(y[test], model.predict(x_test)),
               "train": precision_recall_f1(y[train], model.predict(x_train)),
               "label": f"judge score >= {LABEL_THRESHOLD}", "test_fraction": test_fraction, "seed": seed}
    clf = QualityClassifier(features, model.coef_.ravel(), float(model.intercept_[0]), {"metrics": metrics})
    return clf, metrics
