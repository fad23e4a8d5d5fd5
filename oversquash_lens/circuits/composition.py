"""Q-, K- and V-composition scores between attention heads (Elhage et al. 2021), computed
through the heads' low-rank factors (docs/science.md §"Circuits framework").

Row-vector convention (TransformerLens): a head reads ``x W_V``, writes ``z W_O``, scores
``q k^T = x_dest W_Q W_K^T x_src^T``, so per head

    W_OV = W_V W_O   and   W_QK = W_Q W_K^T      (d_model × d_model, rank ≤ d_head).

For an earlier head 1 and a later head 2 the score of composition kind ``c`` is

    s_c(1 → 2) = ‖W_OV¹ B₂‖_F / (‖W_OV¹‖_F ‖B₂‖_F),   B₂ = W_QK² (Q), (W_QK²)^T (K), W_OV² (V),

exactly what ``HookedTransformer.all_composition_scores`` (TL ≤ 3) and
``TransformerBridge.all_composition_scores`` (TL 4) return. Why these transposes: head 1's
output ``y W_OV¹`` added to the *query* residual changes the score by ``y W_OV¹ W_QK² x^T``
(matrix ``W_OV¹ W_QK²``); added to the *key* residual it changes ``x W_QK² (y W_OV¹)^T =
x (W_QK² W_OV¹^T) y^T``, whose Frobenius norm is that of ``W_OV¹ (W_QK²)^T``; read as a
*value* it is moved on through ``W_OV¹ W_OV²``. The paper writes the same three products in
the column-vector convention (``W_OV = W_O W_V``): ``W_QK^T W_OV`` (Q), ``W_QK W_OV`` (K),
``W_OV W_OV`` (V), which are the transposes of the ones above (same norms).

Never built: a d_model × d_model matrix. Each factored matrix ``U V`` (``U`` d_model × d_head,
``V`` d_head × d_model) is reduced to a core with the same Frobenius behaviour — ``U = Q R``
(QR, ``Q`` orthonormal columns) so ``‖U V X‖_F = ‖R V X‖_F``, and ``V^T = Q' R'`` so
``‖X U V‖_F = ‖X U R'^T‖_F`` — and every pair costs one ``d_head × d_model × d_head`` product.
"""

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from .. import _tl, _validate
from .._display import frame_html
from ..errors import InvalidArgumentError

__all__ = [
    "KINDS",
    "Composition",
    "composition",
    "composition_scores",
    "composition_table",
    "random_composition_baseline",
]

KINDS = ("Q", "K", "V")
#: Most Monte Carlo samples of :func:`random_composition_baseline` (its standard error at the
#: default 256 is already ~1/16 of the spread; 10**5 takes minutes for a large d_model).
MAX_BASELINE_SAMPLES = 100_000
#: Largest ``d_model · d_head`` of the baseline's random factors (a chunk of 64 samples holds
#: four ``[64, d_model, d_head]`` float64 tensors: 2 GiB each at this size).
_MAX_FACTOR = 1 << 22

Scores = Float[Tensor, "layer head_index layer head_index"]


def _check_kind(kind: Any) -> str:
    if not isinstance(kind, str) or kind.upper() not in KINDS:
        raise InvalidArgumentError(f"kind={kind!r} must be one of {list(KINDS)}")
    return kind.upper()


def block_factors(
    model: Any, block: int, *, fold_norm: bool = True
) -> tuple[dict[str, Tensor], bool]:
    """Float64 CPU copies of ``W_Q, W_K, W_V [head, d_model, d_head]`` (grouped K/V heads
    expanded per query head) and ``W_O [head, d_head, d_model]`` of ``block``. With
    ``fold_norm`` the block's pre-attention norm scale γ is folded into its reading matrices
    (``diag(γ) W``); the flag says whether there was one to fold."""
    scale = _tl.ln1_scale(model, block) if fold_norm else None
    gamma = None if scale is None else scale.double().cpu()[None, :, None]
    out = {}
    for key, get in (("Q", _tl.w_q), ("K", _tl.w_k), ("V", _tl.w_v)):
        w = get(model, block).double().cpu()
        out[key] = w if gamma is None else w * gamma
    out["O"] = _tl.w_o(model, block).double().cpu()
    return out, gamma is not None


def _left_core(u: Tensor, v: Tensor) -> Tensor:
    """``R V`` with ``U = Q R``: ``‖U V X‖_F = ‖(R V) X‖_F`` for every X. [..., d_head, d_model]."""
    return torch.linalg.qr(u, mode="r")[1] @ v


def _right_core(u: Tensor, v: Tensor) -> Tensor:
    """``U R'^T`` with ``V^T = Q' R'``: ``‖X U V‖_F = ‖X (U R'^T)‖_F``. [..., d_model, d_head]."""
    return u @ torch.linalg.qr(v.transpose(-2, -1), mode="r")[1].transpose(-2, -1)


def head_cores(
    model: Any, kind: str, *, fold_norm: bool = True, dtype: torch.dtype = torch.float32
) -> tuple[list[Tensor], list[Tensor], bool]:
    """Per block the writer cores of W_OV ``[head, d_head, d_model]`` and the reader cores of
    ``kind``'s matrix ``[head, d_model, d_head]`` (float64 QR, stored in ``dtype``), one block's
    weights in memory at a time; and whether a norm scale was folded."""
    left, right, folded = [], [], False
    for block in range(_tl.model_info(model).n_layers):
        f, has_scale = block_factors(model, block, fold_norm=fold_norm)
        folded |= has_scale
        left.append(_left_core(f["V"], f["O"]).to(dtype))
        u, v = {
            "Q": (f["Q"], f["K"].transpose(-2, -1)),
            "K": (f["K"], f["Q"].transpose(-2, -1)),
            "V": (f["V"], f["O"]),
        }[kind]
        right.append(_right_core(u, v).to(dtype))
    return left, right, folded


def scores_from_cores(left: list[Tensor], right: list[Tensor]) -> Scores:
    """Composition scores from :func:`head_cores`; entries with ℓ₁ ≥ ℓ₂ are 0."""
    n_layers = len(left)
    n_heads, d_head, d_model = left[0].shape
    left_norm = torch.stack([c.square().sum((-2, -1)) for c in left]).sqrt()  # [layer, head]
    right_norm = torch.stack([c.square().sum((-2, -1)) for c in right]).sqrt()
    # every reader core side by side: [d_model, (layer, head, d_head)]
    readers = torch.stack(right).permute(2, 0, 1, 3).reshape(d_model, -1)
    scores = torch.zeros(n_layers, n_heads, n_layers, n_heads, dtype=left[0].dtype)
    width = n_heads * d_head
    for b1 in range(n_layers - 1):
        # every head of b1 against every head of every later block in one product
        prod = left[b1].reshape(width, d_model) @ readers[:, (b1 + 1) * width :]
        prod = prod.view(n_heads, d_head, n_layers - b1 - 1, n_heads, d_head)
        norms = prod.square().sum((1, 4)).sqrt()  # [head, later, head]
        scores[b1, :, b1 + 1 :] = norms / (
            left_norm[b1][:, None, None] * right_norm[b1 + 1 :][None, :, :]
        )
    return scores


def _check_dtype(dtype: Any) -> torch.dtype:
    if dtype not in (torch.float32, torch.float64):
        raise InvalidArgumentError(f"dtype={dtype!r} must be torch.float32 or torch.float64")
    return dtype


def composition_scores(
    model: Any, kind: str, *, fold_norm: bool = True, dtype: torch.dtype = torch.float32
) -> Scores:
    """Normalised ``kind``-composition score of every head pair (docs/science.md §"Circuits
    framework"): ``scores[l1, h1, l2, h2]`` for an earlier head (l1, h1) writing into a later
    head (l2, h2); 0 where ``l1 >= l2`` (TransformerLens' mask). NaN for a head whose circuit
    is exactly zero.

    Example:
        >>> s = composition_scores(model, "K")
        >>> s.shape  # [n_layers, n_heads, n_layers, n_heads]; s[0, 3, 1, 5] is L0H3 -> L1H5

    Args:
        model: a TransformerBridge or HookedTransformer (read only).
        kind: ``"Q"``, ``"K"`` or ``"V"``: which input of the later head the earlier head's
            OV output feeds (see the module docstring for the matrices).
        fold_norm: fold each block's pre-attention norm scale γ into its own ``W_Q, W_K, W_V``
            (what a head really reads is ``normalise(x) · diag(γ)``). TransformerLens'
            ``HookedTransformer.from_pretrained`` has already folded it (``LayerNormPre``: no
            γ left, so this changes nothing); a ``TransformerBridge`` keeps γ in the norm, and
            ``fold_norm=False`` then reproduces its ``all_composition_scores`` exactly.
            The norm's mean subtraction (LayerNorm) is not folded (TL's ``center_weights``).
        dtype: precision of the pair products (the factor cores always come from float64
            QR): float32 (default; ~1e-7 relative error, half the time of float64 — 9 s vs
            19 s for SmolLM2-135M's 35k pairs on one CPU thread) or float64.

    Returns:
        ``[layer, head_index, layer, head_index]`` scores in [0, 1], in ``dtype`` (the axis
        TransformerLens calls ``layer`` is the block index b of docs/science.md).
    """
    kind = _check_kind(kind)
    dtype = _check_dtype(dtype)
    left, right, _ = head_cores(model, kind, fold_norm=_flag(fold_norm, "fold_norm"), dtype=dtype)
    return scores_from_cores(left, right)


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgumentError(f"{name}={value!r} must be True or False")
    return value


def random_composition_baseline(
    d_model: int, d_head: int, *, n_samples: int = 256, seed: int = 0
) -> tuple[float, float]:
    """Mean and standard deviation of the composition score of two independent random
    matrices shaped like a head's circuits: ``A = U₁V₁`` and ``B = U₂V₂`` with i.i.d. Gaussian
    ``U [d_model, d_head]`` and ``V [d_head, d_model]`` (Monte Carlo, private generator with
    ``seed``). All three kinds share it (same shapes). For reference, rotation invariance gives
    ``E[score²] = 1/d_model`` exactly, so the mean sits just below ``1/sqrt(d_model)``."""
    d_model = _validate.integer(d_model, "d_model", minimum=1)
    d_head = _validate.integer(d_head, "d_head", minimum=1)
    n_samples = _validate.integer(
        n_samples, "n_samples", minimum=1, maximum=MAX_BASELINE_SAMPLES,
        hint=" (a Monte Carlo mean: more samples only shrink its tiny standard error)",
    )  # fmt: skip
    seed = _validate.integer(seed, "seed")
    if d_model * d_head > _MAX_FACTOR:
        raise InvalidArgumentError(
            f"d_model={d_model}, d_head={d_head}: random factors of {d_model * d_head} entries "
            f"exceed {_MAX_FACTOR} (64 samples at once would need "
            f"{4 * 64 * 8 * d_model * d_head / 2**30:.3g} GiB)"
        )
    gen = torch.Generator().manual_seed(seed)
    values = []
    for start in range(0, n_samples, 64):
        k = min(64, n_samples - start)
        u1, u2 = (torch.randn(k, d_model, d_head, generator=gen, dtype=torch.float64) for _ in "ab")
        v1, v2 = (torch.randn(k, d_head, d_model, generator=gen, dtype=torch.float64) for _ in "ab")
        left, right = _left_core(u1, v1), _right_core(u2, v2)
        num = (left @ right).square().sum((-2, -1)).sqrt()
        den = left.square().sum((-2, -1)).sqrt() * right.square().sum((-2, -1)).sqrt()
        values.append(num / den)
    scores = torch.cat(values)
    std = float(scores.std()) if n_samples > 1 else 0.0
    return float(scores.mean()), std


@dataclass(frozen=True)
class Composition:
    """Composition scores of one kind, with the random baseline they are read against.

    Attributes:
        scores: ``[layer, head_index, layer, head_index]``; 0 where ``l1 >= l2``.
        kind: ``"Q"``, ``"K"`` or ``"V"``.
        baseline: mean score of random Gaussian matrices of the same shapes
            (:func:`random_composition_baseline`); ``baseline_std`` its spread.
        folded: whether a pre-attention norm scale was folded into the reading weights.
    """

    scores: Scores
    kind: str
    baseline: float
    baseline_std: float
    folded: bool
    d_model: int
    model_name: str = ""

    @property
    def relative(self) -> Scores:
        """``scores / baseline``: 1 means "as composed as two random heads"."""
        return self.scores / self.baseline

    @property
    def n_layers(self) -> int:
        return self.scores.shape[0]

    @property
    def n_heads(self) -> int:
        return self.scores.shape[1]

    def to_dataframe(self) -> pd.DataFrame:
        """One row per pair with ``l1 < l2``: ``source_block, source_head, dest_block,
        dest_head, source, dest`` (``"L0H3"``), ``score``, ``relative`` (score / baseline) and
        ``z`` ((score − baseline) / baseline_std), sorted by decreasing score."""
        n_layers, n_heads = self.n_layers, self.n_heads
        idx = torch.cartesian_prod(*(torch.arange(k) for k in (n_layers, n_heads) * 2))
        idx = idx[idx[:, 0] < idx[:, 2]]
        vals = self.scores[idx[:, 0], idx[:, 1], idx[:, 2], idx[:, 3]].double().numpy()
        frame = pd.DataFrame(
            idx.numpy(), columns=["source_block", "source_head", "dest_block", "dest_head"]
        )
        frame.insert(4, "source", [f"L{a}H{b}" for a, b in idx[:, :2].tolist()])
        frame.insert(5, "dest", [f"L{a}H{b}" for a, b in idx[:, 2:].tolist()])
        frame["score"] = vals
        frame["relative"] = vals / self.baseline
        frame["z"] = (vals - self.baseline) / self.baseline_std if self.baseline_std else math.nan
        frame.insert(0, "kind", self.kind)
        return frame.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)

    def top(self, k: int = 10) -> pd.DataFrame:
        """The ``k`` most composed pairs."""
        return self.to_dataframe().head(k)

    def _repr_html_(self) -> str:
        title = (
            f"<b>Composition</b> {self.model_name}: {self.kind}-composition, "
            f"{self.n_layers} layers × {self.n_heads} heads; random baseline "
            f"{self.baseline:.4f} ± {self.baseline_std:.4f} (d_model={self.d_model}); norm scale "
            f"{'folded' if self.folded else 'not folded'}"
        )
        return frame_html(title, self.top(20))

    def plot(self) -> Any:
        """Plotly heat map, source layer·head × destination layer·head (see
        :func:`oversquash_lens.circuits.plots.composition_heatmap`)."""
        from .plots import composition_heatmap

        return composition_heatmap(self)


def composition(
    model: Any,
    kind: str,
    *,
    fold_norm: bool = True,
    baseline_samples: int = 256,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Composition:
    """:func:`composition_scores` together with the random baseline, as a result object with
    ``to_dataframe()``, ``top(k)``, ``relative`` and ``plot()``.

    Example:
        >>> comp = composition(model, "V")
        >>> comp.top(5)  # the five most V-composed pairs, with score / random baseline
    """
    kind = _check_kind(kind)
    dtype = _check_dtype(dtype)
    _validate.integer(baseline_samples, "baseline_samples", minimum=1, maximum=MAX_BASELINE_SAMPLES)
    _validate.integer(seed, "seed")
    info = _tl.model_info(model)
    left, right, folded = head_cores(
        model, kind, fold_norm=_flag(fold_norm, "fold_norm"), dtype=dtype
    )
    mean, std = random_composition_baseline(
        info.d_model, info.d_head, n_samples=baseline_samples, seed=seed
    )
    return Composition(
        scores=scores_from_cores(left, right),
        kind=kind,
        baseline=mean,
        baseline_std=std,
        folded=folded,
        d_model=info.d_model,
        model_name=info.name,
    )


def composition_table(model: Any, kind: str, *, fold_norm: bool = True) -> pd.DataFrame:
    """Tidy DataFrame of :func:`composition` (one row per head pair, best first)."""
    return composition(model, kind, fold_norm=fold_norm).to_dataframe()
