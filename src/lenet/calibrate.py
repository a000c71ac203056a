"""Fit a checkpoint's trust calibration (lenet.trust) on held-out data and store it in a copy.

    lenet calibrate --checkpoint runs/x/model.safetensors --out runs/x/calibrated.safetensors
    lenet calibrate --checkpoint mnist --out mnist.safetensors --json

Held-out digits are the checkpoint's own validation split (the training images its run held
out: the config's seed and val_size), each handed over the way people do (as stored,
inverted, tightly cropped, enlarged and blurred, thickened or thinned, scanned small), and
for a digit model typed digits too (lenet.synthetic.typed_digits), all put through
preprocessing. Non-digits come from lenet.synthetic (for a model of other classes, MNIST
digits are non-items too). The temperature is fitted on all held-out digits. Each source is
cut in two: the first halves fit the detector, the second halves choose its threshold (at
most REFUSE_RATE of held-out digits, handwritten and typed together, refused;
REFUSE_RATE_OBJECTS of a garment model's items) and give the rates reported in the "trust"
metadata.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

from lenet.data import load_dataset, split_indices
from lenet.errors import LenetError
from lenet.predict import Predictor
from lenet.preprocess import Preprocessed
from lenet.synthetic import nondigits, typed_digits
from lenet.trust import Trust

REFUSE_RATE = 0.005  # the share of held-out real digits the threshold may refuse
# For a model of other things (Fashion-MNIST) its held-out items handed over the same ways are
# far harder to tell from non-items: 2% of them refused is 0.9% of its plain test set, and
# flags 92% of generated non-digits (0.5%: 0.36% and 82%).
REFUSE_RATE_OBJECTS = 0.02
NONDIGITS = 6000  # generated non-digits (half to fit, half to choose the threshold)
NONDIGIT_SEED = 1_000  # the tests and the benchmark use other seeds
TYPED, TYPED_SEED = 3000, 2_000  # digits drawn by fonts (lenet.synthetic.typed_digits), digit models only
VARIANTS = 2  # ways each held-out digit is handed over (both in the same half)
UPSCALERS = (Image.Resampling.NEAREST, Image.Resampling.BILINEAR, Image.Resampling.BICUBIC)
HIDDEN, WEIGHT_DECAY, STEPS = 16, 1e-3, 300  # the detector: width, Adam's weight decay, full-batch steps


def held_out(predictor: Predictor, root=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The checkpoint's validation split: (images (N, 28, 28) uint8, labels (N,))."""
    config = predictor.meta.get("config") or {}
    val_size, seed = config.get("val_size"), config.get("seed")
    if not isinstance(val_size, int) or not isinstance(seed, int) or val_size < 100:
        raise LenetError("lenet calibrate needs a checkpoint trained with a validation split "
                         "(its config names val_size >= 100 and seed)")
    data = load_dataset(predictor.dataset if predictor.dataset != "unknown" else "mnist", root)
    _, val_idx = split_indices(len(data.train_labels), val_size, seed)
    return data.train_images[val_idx], data.train_labels[val_idx]


def as_handed_over(image: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A white-on-black 28x28 digit -> one of the ways people hand digits over."""
    img = Image.fromarray(image, "L")
    way = rng.integers(6)
    if way == 0:
        return img
    paper = Image.fromarray(255 - image, "L")  # dark ink on light paper
    if way == 1:
        return paper
    ys, xs = np.nonzero(image > 0)
    if len(ys) == 0:
        return paper
    tight = paper.crop((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))
    if way == 2:
        return tight
    if way == 3:  # a blurry close-up
        k = int(rng.integers(2, 6))
        return tight.resize((tight.width * k, tight.height * k), Image.Resampling.BICUBIC)
    if way == 4:  # thick or thin pen
        return paper.filter(ImageFilter.MinFilter(3) if rng.random() < 0.5 else ImageFilter.MaxFilter(3))
    scale = rng.uniform(6, 16) / max(tight.size)  # a 6..16 px scan, enlarged again by a viewer
    small = tight.resize((max(1, round(tight.width * scale)), max(1, round(tight.height * scale))),
                         Image.Resampling.BOX)
    if rng.random() < 0.5:
        small = Image.fromarray(np.pad(np.asarray(small), int(rng.integers(1, 3)), constant_values=255), "L")
    k = int(rng.integers(3, 9))
    return small.resize((small.width * k, small.height * k), UPSCALERS[int(rng.integers(len(UPSCALERS)))])


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T minimising the negative log likelihood of softmax(logits / T)."""
    log_t = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=100)

    def loss():
        opt.zero_grad()
        value = torch.nn.functional.cross_entropy(logits / log_t.exp(), labels)
        value.backward()
        return value

    opt.step(loss)
    return float(log_t.detach().exp())


def fit_detector(feats: torch.Tensor, is_not: torch.Tensor, seed: int = 0) -> dict:
    """A class-balanced two-layer detector (F -> HIDDEN -> 1) -> Trust's detector fields."""
    torch.manual_seed(seed)
    mean, std = feats.mean(0), feats.std(0).clamp(min=1e-4)
    z = (feats - mean) / std
    net = torch.nn.Sequential(torch.nn.Linear(z.shape[1], HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, 1))
    positive = float(is_not.mean())
    weights = torch.where(is_not > 0, 0.5 / positive, 0.5 / (1 - positive))  # both classes count alike
    opt = torch.optim.Adam(net.parameters(), lr=1e-2, weight_decay=WEIGHT_DECAY)
    for _ in range(STEPS):  # full batch: a few thousand rows
        opt.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(net(z).squeeze(1), is_not, weight=weights).backward()
        opt.step()
    first, last = net[0], net[2]
    return {"mean": mean.tolist(), "std": std.tolist(), "hidden_weight": first.weight.detach().tolist(),
            "hidden_bias": first.bias.detach().tolist(), "weight": last.weight.detach()[0].tolist(),
            "bias": float(last.bias.detach())}


def digits_to_calibrate(predictor: Predictor, root, seed: int, rng: np.random.Generator, log
                        ) -> tuple[list[Preprocessed], torch.Tensor, int]:
    """The held-out digits (and typed ones, for a digit model) handed over and preprocessed ->
    (those found, their labels, how many of them belong to the first half)."""
    images, labels = held_out(predictor, root)
    sources = [(images.numpy(), labels.tolist(), VARIANTS)]
    if predictor.digits:  # printed digits too: letters come from fonts, digits must as well
        typed, typed_labels = typed_digits(TYPED, TYPED_SEED + seed)
        sources.append((typed, typed_labels, 1))
    log(f"calibrate: preprocessing {VARIANTS} x {len(labels):,} held-out {predictor.dataset} images"
        + (f", {TYPED:,} typed digits" if predictor.digits else "") + f" and {NONDIGITS:,} non-digits")
    first, second = [], []  # each source is cut in two, an image's copies on one side
    for xs, ys, variants in sources:
        copies = [(y, predictor.preprocess(as_handed_over(x, rng))) for x, y in zip(xs, ys) for _ in range(variants)]
        cut = len(copies) // 2 // variants * variants
        first += [c for c in copies[:cut] if c[1].image is not None]
        second += [c for c in copies[cut:] if c[1].image is not None]
    found = first + second
    return [p for _, p in found], torch.tensor([y for y, _ in found]), len(first)


def calibrate(predictor: Predictor, root=None, seed: int = 0, log=print) -> Trust:
    """Fit temperature, detector and threshold for this predictor's model (see the module doc)."""
    rng = np.random.default_rng(seed)
    digits, labels, half_d = digits_to_calibrate(predictor, root, seed, rng, log)
    others, _ = nondigits(NONDIGITS, NONDIGIT_SEED + seed)
    if not predictor.digits:  # for garments, digits are non-items too
        mnist = load_dataset("mnist", root).train_images[: NONDIGITS // 2].numpy()
        others = others[: NONDIGITS // 2] + [as_handed_over(x, rng) for x in mnist]
        rng.shuffle(others)
    others = [p for p in map(predictor.preprocess, others) if p.image is not None]

    logits, _, digit_feats = predictor.infer(digits)
    temperature = fit_temperature(logits, labels)
    _, _, other_feats = predictor.infer(others)
    half_o = len(others) // 2
    feats = torch.cat([digit_feats[:half_d], other_feats[:half_o]])
    is_not = torch.cat([torch.zeros(half_d), torch.ones(half_o)])
    trust = Trust(temperature, **fit_detector(feats, is_not, seed))

    held_d = trust.not_digit_probability(digit_feats[half_d:])
    held_o = trust.not_digit_probability(other_feats[half_o:])
    rate = REFUSE_RATE if predictor.digits else REFUSE_RATE_OBJECTS
    threshold = min(max(float(torch.quantile(held_d, 1.0 - rate)) + 1e-6, 0.05), 0.99)
    trust = replace(trust, threshold=threshold)
    return replace(trust, report=measure(trust, logits[half_d:], labels[half_d:], held_d,
                                         held_o, len(others) - half_o, seed))


def measure(trust: Trust, logits: torch.Tensor, labels: torch.Tensor, p_digits: torch.Tensor,
            p_others: torch.Tensor, n_others: int, seed: int) -> dict:
    """The rates on the second halves, for the metadata and `lenet calibrate --json`."""
    probs = torch.softmax(logits / trust.temperature, dim=1)
    digit_status = [trust.status(p, float(q))[0] for p, q in zip(probs, p_digits)]
    correct = (probs.argmax(1) == labels).float()
    confident = torch.tensor([s == "ok" for s in digit_status])
    return {
        "method": "temperature scaling + a two-layer not-a-digit detector (lenet.trust)",
        "seed": seed, "held_out_digits": len(labels), "held_out_nondigits": n_others,
        "digits_refused": round(sum(s == "not_a_digit" for s in digit_status) / len(labels), 5),
        "digits_unsure": round(sum(s == "unsure" for s in digit_status) / len(labels), 5),
        "accuracy_when_ok": round(float(correct[confident].mean()) if confident.any() else math.nan, 5),
        "nondigits_refused": round(float((p_others >= trust.threshold).float().mean()), 5),
    }


def calibrate_command(checkpoint, out: Path, root=None, seed: int = 0, overwrite: bool = False, log=print) -> dict:
    """`lenet calibrate`: a copy of the checkpoint with its "trust" metadata, written atomically."""
    from lenet.checkpoint import save_checkpoint

    if out.exists() and not overwrite:
        raise LenetError(f"{out} exists; pass --overwrite to replace it")
    if out.suffix != ".safetensors":
        raise LenetError(f"{out}: --out must end in .safetensors")
    predictor = Predictor(checkpoint)
    trust = calibrate(predictor, root, seed, log)
    save_checkpoint(out, predictor.model, {**predictor.meta, "trust": trust.to_meta()})
    return {"path": str(out), "temperature": trust.temperature, "threshold": trust.threshold, "report": trust.report}
