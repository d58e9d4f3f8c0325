"""Scores for generated images: prompt adherence, CLIP R-precision and a CLIP-space Fréchet distance.

Pure functions over images, embeddings and parsed captions; the model is never called here.

- :func:`adherence` reads each image with the model-free analyser (``models.evaluation.analysis``)
  and counts how often the object has the color, shape, size and position the prompt asked for.
- :func:`clip_r_precision` follows the definition of Xu et al. 2018 (AttnGAN, §4) as used for
  DALL-E-style evaluation by Park et al. 2021: rank the true caption of each generated image
  among candidate captions by CLIP cosine similarity and count how often it is in the top ``k``.
- :func:`frechet_distance` is the FID formula (Heusel et al. 2017, Eq. 6) computed on CLIP image
  embeddings instead of Inception features.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from models.data.shapes import SHAPES
from models.evaluation.analysis import ImageAnalysis, analyze, score

# The attributes the bar counts; "all four" means these, all at once.
BAR_ATTRIBUTES: tuple[str, ...] = ("color", "shape", "size", "position")
ATTRIBUTES: tuple[str, ...] = (*BAR_ATTRIBUTES, "background")

ArrayLike = np.ndarray | torch.Tensor


# -- prompt adherence -----------------------------------------------------------------------------
@dataclass(frozen=True)
class AdherenceReport:
    """Fractions of images whose object has the asked attribute.

    ``accuracy[a]`` is taken over the images whose prompt named attribute ``a`` (``asked[a]`` of
    them); a prompt that leaves ``a`` out lets the world draw it at random, so there is nothing to
    check. ``all_four`` is the fraction of all ``n`` images with every asked bar attribute right.
    """

    n: int
    accuracy: dict[str, float]
    asked: dict[str, int]
    all_four: float
    per_image: list[dict[str, bool]] = field(default_factory=list, repr=False)
    # asked shape -> shape the analyser read ("none": no object) -> images; adherence() fills it,
    # adherence_from_scores() cannot (scores say right or wrong, not what was drawn)
    shape_confusion: dict[str, dict[str, int]] = field(default_factory=dict)


def _asked_value(asked: object, attribute: str) -> object:
    if isinstance(asked, Mapping):
        return asked.get(attribute)
    return getattr(asked, attribute, None)


def adherence_from_scores(
    scores: Sequence[Mapping[str, bool]], asked_attributes: Sequence[object]
) -> AdherenceReport:
    """Aggregate per-image attribute checks (``analysis.score`` output) into an :class:`AdherenceReport`.

    :param scores: one ``{attribute: correct}`` dict per image.
    :param asked_attributes: the parsed captions (``CaptionAttributes`` or mappings); an attribute
        that is ``None`` was not asked for and is not counted.
    """
    if len(scores) != len(asked_attributes):
        raise ValueError(f"{len(scores)} scores for {len(asked_attributes)} captions")
    hits = dict.fromkeys(ATTRIBUTES, 0)
    asked_counts = dict.fromkeys(ATTRIBUTES, 0)
    all_right = 0
    per_image: list[dict[str, bool]] = []
    for checks, asked in zip(scores, asked_attributes, strict=True):
        row: dict[str, bool] = {}
        for attribute in ATTRIBUTES:
            if _asked_value(asked, attribute) is None:
                continue
            correct = bool(checks.get(attribute, False))
            row[attribute] = correct
            asked_counts[attribute] += 1
            hits[attribute] += correct
        row["all"] = all(row.get(a, True) for a in BAR_ATTRIBUTES)
        all_right += row["all"]
        per_image.append(row)
    accuracy = {a: hits[a] / asked_counts[a] for a in ATTRIBUTES if asked_counts[a]}
    n = len(scores)
    return AdherenceReport(
        n=n,
        accuracy=accuracy,
        asked=asked_counts,
        all_four=all_right / n if n else 0.0,
        per_image=per_image,
    )


def adherence(images: Sequence[np.ndarray], asked_attributes: Sequence[object]) -> AdherenceReport:
    """Prompt adherence of generated images by model-free image analysis.

    :param images: uint8 ``[H x W x 3]`` arrays, one per prompt (any side the analyser accepts).
    :param asked_attributes: ``parse_caption(prompt)`` of each image's prompt.
    """
    analyses = [analyze(np.asarray(image)) for image in images]
    scores = [score(analysis, asked) for analysis, asked in zip(analyses, asked_attributes, strict=True)]
    report = adherence_from_scores(scores, asked_attributes)
    return replace(report, shape_confusion=shape_confusion(analyses, asked_attributes))


def shape_confusion(
    analyses: Sequence[ImageAnalysis], asked_attributes: Sequence[object]
) -> dict[str, dict[str, int]]:
    """For each asked shape, how many images the analyser read as each shape (``none`` where it
    found no object): which shape a model draws instead says more than the accuracy alone (a
    decoder that draws stars for everything and one that draws blobs score the same)."""
    confusion: dict[str, dict[str, int]] = {shape: dict.fromkeys((*SHAPES, "none"), 0) for shape in SHAPES}
    for analysis, asked in zip(analyses, asked_attributes, strict=True):
        wanted = _asked_value(asked, "shape")
        if wanted is None:
            continue
        confusion[str(wanted)][analysis.shape or "none"] += 1  # None when no object was found
    return {shape: row for shape, row in confusion.items() if sum(row.values())}


# -- CLIP R-precision -----------------------------------------------------------------------------
def _as_float64(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def clip_r_precision(
    image_emb: ArrayLike,
    text_emb: ArrayLike,
    k: int = 1,
    *,
    distractors: int | None = None,
    seed: int = 0,
) -> float:
    """The fraction of images whose own caption ranks in the top ``k`` of the candidate captions.

    Row ``i`` of ``image_emb`` was generated from the caption embedded in row ``i`` of ``text_emb``.
    Candidates are compared by cosine similarity (the embeddings are normalised here).

    - ``distractors=None`` (the default, used by ``unclip evaluate``): the candidates are all ``N``
      captions of the evaluation set, so random embeddings score about ``k / N``.
    - ``distractors=R``: the AttnGAN protocol, the true caption plus ``R`` others drawn at random
      (without replacement, by ``seed``) from the rest of the set; chance is ``k / (R + 1)``.
      AttnGAN uses ``R = 99``.

    A candidate that ties the true caption (e.g. the same prompt text twice in the set) does not
    push it down: the rank counts only candidates scoring strictly higher.

    :param image_emb: ``[N x D]`` CLIP image embeddings of the generated images.
    :param text_emb: ``[N x D]`` CLIP text embeddings of their prompts.
    """
    images = _normalize(_as_float64(image_emb))
    texts = _normalize(_as_float64(text_emb))
    if images.shape != texts.shape or images.ndim != 2:
        raise ValueError(f"need two [N x D] arrays of one shape, got {images.shape} and {texts.shape}")
    n = images.shape[0]
    if n == 0:
        raise ValueError("no embeddings")
    sims = images @ texts.T  # [N x N]: image i against caption j
    true = np.diag(sims)  # [N]
    if distractors is None:
        candidates = np.ones((n, n), dtype=bool)
    else:
        candidates = _distractor_mask(n, distractors, seed)
    # A caption identical to the true one (cosine 1 between texts) ties by construction; allow a
    # hair of float slack so such duplicates never count as "higher".
    higher = (sims > true[:, None] + 1e-9) & candidates  # [N x N]
    rank = higher.sum(axis=1)  # [N]: 0 means the true caption is first
    return float(np.mean(rank < k))


def _distractor_mask(n: int, distractors: int, seed: int) -> np.ndarray:
    """[N x N] bool: row i marks i itself and ``distractors`` random other captions."""
    if not 0 < distractors < n:
        raise ValueError(f"distractors must be in 1..{n - 1} for {n} captions, got {distractors}")
    rng = np.random.default_rng(seed)
    mask = np.eye(n, dtype=bool)
    for i in range(n):
        others = np.delete(np.arange(n), i)
        mask[i, rng.choice(others, size=distractors, replace=False)] = True
    return mask


# -- Fréchet distance -----------------------------------------------------------------------------
def _sqrtm_psd(sigma: np.ndarray) -> np.ndarray:
    """The symmetric square root of a symmetric positive semi-definite matrix (eigenvalues clipped at 0)."""
    eigvals, eigvecs = np.linalg.eigh((sigma + sigma.T) / 2)
    return (eigvecs * np.sqrt(np.clip(eigvals, 0.0, None))) @ eigvecs.T


def frechet_distance_from_stats(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2).

    d² = ||mu1 - mu2||² + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^½)   (Heusel et al. 2017, Eq. 6)

    ``(sigma1 sigma2)^½`` is not symmetric, so its trace is taken through the similar symmetric
    matrix ``A = sigma1^½ sigma2 sigma1^½`` (same eigenvalues as ``sigma1 sigma2``):
    tr((sigma1 sigma2)^½) = Σ sqrt(eig(A)). ``A`` is PSD, so ``eigvalsh`` is stable and real; round-off
    negatives are clipped to 0. Everything is float64.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    root1 = _sqrtm_psd(sigma1)
    a = root1 @ sigma2 @ root1
    eig = np.linalg.eigvalsh((a + a.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)
    return max(value, 0.0)


def gaussian_stats(emb: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and unbiased covariance ``[D x D]`` of ``[N x D]`` embeddings (float64)."""
    x = _as_float64(emb)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need [N x D] embeddings with N >= 2, got {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def frechet_distance(emb_a: ArrayLike, emb_b: ArrayLike) -> float:
    """FID-style distance between two embedding sets: Gaussian fits of ``[N x D]`` and ``[M x D]``.

    Identical sets give 0 (up to round-off). The value depends on the embedding width and on the
    sample sizes (the covariance estimate is biased for small N), so compare runs only at equal N.
    """
    mu_a, sigma_a = gaussian_stats(emb_a)
    mu_b, sigma_b = gaussian_stats(emb_b)
    if mu_a.shape != mu_b.shape:
        raise ValueError(f"embedding widths differ: {mu_a.shape[0]} and {mu_b.shape[0]}")
    return frechet_distance_from_stats(mu_a, sigma_a, mu_b, sigma_b)
