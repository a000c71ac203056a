"""How far to trust an answer: every result gets a status.

    ok           the top class, with a calibrated probability high enough to stand alone
    unsure       the top two classes are close, or the top one is improbable ("4 or 9?")
    not_a_digit  there is ink, but it is no digit (for other datasets: none of its classes)
    no_digit     nothing there (preprocessing found no ink)

The method (fitted by `lenet calibrate`, stored in the checkpoint's metadata as "trust"):
  1. Temperature scaling (Guo et al., 2017): one temperature T fitted by negative log
     likelihood on held-out digits, so softmax(logits / T) means what it says.
  2. A not-a-digit detector: a small two-layer network (F -> 16 -> 1) on what the model and
     preprocessing already computed (the penultimate layer, the energy logsumexp(logits),
     the largest logit, the ink's share of the 28x28 and its stroke width) trained on
     held-out digits against generated non-digits (lenet.synthetic). Its threshold is
     chosen on a second held-out split so that at most a set share of real digits is refused.
  3. Unsure: calibrated top probability under `min_probability`, or the runner-up within
     `min_margin` of it.
A checkpoint without "trust" gets T = 1, no detector and the default unsure rule.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from lenet.errors import LenetError

STATUSES = ("ok", "unsure", "not_a_digit", "no_digit")
MIN_PROBABILITY = 0.6  # default: a top class under 60% (calibrated) is a guess
MIN_MARGIN = 0.25  # default: a runner-up within 25 points of the top class is a tie
MAX_FEATURES = 4096  # bound on the detector's size read from a file


@dataclass(frozen=True)
class Trust:
    """A checkpoint's calibration: temperature, detector, thresholds, and how they were found."""

    temperature: float = 1.0
    mean: list[float] = field(default_factory=list)  # (F,) feature standardisation
    std: list[float] = field(default_factory=list)  # (F,)
    hidden_weight: list[list[float]] = field(default_factory=list)  # (H, F); empty: no detector
    hidden_bias: list[float] = field(default_factory=list)  # (H,)
    weight: list[float] = field(default_factory=list)  # (H,) the output unit
    bias: float = 0.0
    threshold: float = 0.5  # p(not a digit) at or above this -> not_a_digit
    min_probability: float = MIN_PROBABILITY
    min_margin: float = MIN_MARGIN
    report: dict = field(default_factory=dict)  # what calibration measured (rates, counts)

    @classmethod
    def from_meta(cls, meta: dict) -> Trust:
        """The "trust" entry of a checkpoint's metadata, checked; defaults when absent."""
        raw = meta.get("trust")
        if raw is None:
            return cls()
        if not isinstance(raw, dict) or set(raw) - set(cls.__dataclass_fields__):
            raise LenetError("checkpoint metadata 'trust' is malformed (expected lenet calibrate's object)")
        try:
            trust = cls(**raw)
            vectors = [trust.mean, trust.std, trust.hidden_bias, trust.weight, *trust.hidden_weight]
            sizes = [len(trust.std), len(trust.hidden_bias), len(trust.weight), len(trust.hidden_weight)]
            numbers = [trust.temperature, trust.bias, trust.threshold, trust.min_probability, trust.min_margin]
            ok = (all(isinstance(v, list) for v in vectors) and len(trust.mean) <= MAX_FEATURES
                  and sizes == [len(trust.mean)] + [len(trust.weight)] * 3
                  and all(len(row) == len(trust.mean) for row in trust.hidden_weight)
                  and all(_finite(x) for v in vectors for x in v) and all(_finite(x) for x in numbers)
                  and trust.temperature > 0 and all(s > 0 for s in trust.std) and isinstance(trust.report, dict))
        except TypeError:
            ok = False
        if not ok:
            raise LenetError("checkpoint metadata 'trust' has wrong types or values; run lenet calibrate again")
        return trust

    def to_meta(self) -> dict:
        return asdict(self)

    def not_digit_probability(self, features: torch.Tensor) -> torch.Tensor | None:
        """(B, F) features -> (B,) p(not a digit), or None without a detector."""
        if not self.weight:
            return None
        if features.shape[1] != len(self.mean):
            raise LenetError(f"checkpoint metadata 'trust' expects {len(self.mean)} features, "
                             f"this model gives {features.shape[1]}; run lenet calibrate again")
        z = (features - torch.tensor(self.mean)) / torch.tensor(self.std)  # (B, F)
        h = torch.relu(z @ torch.tensor(self.hidden_weight).T + torch.tensor(self.hidden_bias))  # (B, H)
        return torch.sigmoid(h @ torch.tensor(self.weight) + self.bias)

    def status(self, probs: torch.Tensor, p_not: float | None) -> tuple[str, list[int] | None]:
        """One image's calibrated (C,) probabilities and p(not a digit) -> (status, the two
        classes it is unsure between, or None)."""
        if p_not is not None and p_not >= self.threshold:
            return "not_a_digit", None
        top = probs.topk(min(2, probs.numel()))
        first = float(top.values[0])
        second = float(top.values[1]) if probs.numel() > 1 else 0.0
        if first < self.min_probability or first - second < self.min_margin:
            return "unsure", [int(i) for i in top.indices]
        return "ok", None


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def features(hidden: torch.Tensor, logits: torch.Tensor, images: torch.Tensor,
             stroke_width: torch.Tensor) -> torch.Tensor:
    """What the detector reads -> (B, F + 4).

    hidden (B, F) the penultimate layer; logits (B, C); images (B, 1, 28, 28) the model's
    input in [0, 1]; stroke_width (B,) preprocessing's estimate, in 20-box pixels.
    """
    energy = torch.logsumexp(logits, dim=1, keepdim=True)  # (B, 1): low for what the model never saw
    top = logits.max(dim=1, keepdim=True).values  # (B, 1)
    share = images.flatten(1).mean(dim=1, keepdim=True)  # (B, 1) ink share: blobs and dots fill the box
    width = torch.log1p(stroke_width.clamp(min=0).reshape(-1, 1))  # (B, 1) thick: blobs; thin: scribbles
    return torch.cat([hidden, energy, top, share, width], dim=1).float()
