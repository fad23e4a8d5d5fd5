"""Measured over-squashing: the Jacobian norm ‖∂h_t^(ℓ)/∂h_i^(0)‖_F (PAPER §3).

For the target position ``t``, every layer ℓ = 1..L and every input position ``i``, the
sensitivity is the Frobenius norm of the ``d_model × d_model`` block of the Jacobian of the
target's residual after block ℓ−1 with respect to the residual entering block 0 at ``i`` — the
GNN over-squashing measure (Topping et al. 2022) on the causal-attention graph, and the
left-hand side of Theorem 5.1 (compare :func:`oversquash_lens.oversquashing_bound`).

How it is computed: one forward pass in which a hook replaces ``h^(0)`` by a leaf tensor that
requires grad and other hooks keep the target's residual after every block; then, per layer,
batched backward passes (``torch.autograd.grad(..., is_grads_batched=True)``: the backward
graph is vmapped over a chunk of cotangents — one-hot output coordinates for ``exact``, Gaussian
probes for ``estimate``) each yield a whole chunk of vector-Jacobian products, going back only
through the blocks below that layer. Parameters are frozen during the call (no parameter
gradients are built) and restored afterwards, and no autograd graph is left on the model. Only
positions up to the target are run: causal attention makes later positions irrelevant (0).

- ``exact``: ``L · d_model`` VJPs; ``‖J_i‖_F² = Σ_c ‖∂h_t[c]/∂h_i‖²``.
- ``estimate``: Hutchinson probes ``u ~ N(0, I)``: ``E‖J_iᵀu‖² = ‖J_i‖_F²``, ``L · n_probes``
  VJPs; the reported value is the square root of the probe mean (relative error of roughly
  ``1/sqrt(2 · n_probes)`` or better).
"""

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from .. import _tl, _validate
from .._display import frame_html
from .._tl.protocol import HookedModel
from ..errors import InvalidArgumentError
from ..glasses import Intervention, applied

__all__ = ["Sensitivity", "token_sensitivity"]

#: Rough activation budget of one chunk (bytes) when ``chunk_size`` is not given.
_CHUNK_BYTES = 512 << 20
#: Most bytes the Gaussian probes of ``method="estimate"`` (float64, all layers) may take.
_PROBE_BYTES = 1 << 30


@dataclass(frozen=True)
class Sensitivity:
    """Jacobian sensitivity of one target token to every input token, per layer.

    Attributes:
        values: ``[layer, pos]``; row ``ℓ−1`` is ``‖∂h_target^(ℓ)/∂h_pos^(0)‖_F`` for the
            output of block ``ℓ−1`` (ℓ = 1..n_layers); positions after the target are 0.
        tokens: the ``[pos]`` token ids of the sequence.
        target: the absolute target position.
        method: ``"exact"`` or ``"estimate"``.
        n_probes: probes per layer for ``"estimate"`` (None for ``"exact"``).
        labels: the tokens as text (when the model has a tokenizer), else their ids.
    """

    values: Float[Tensor, "layer pos"]
    tokens: Int[Tensor, " pos"]
    target: int
    method: str
    n_probes: int | None
    labels: tuple[str, ...] = ()
    model_name: str = ""

    def to_dataframe(self) -> pd.DataFrame:
        """One row per (layer, pos): ``layer`` (1-based: output of block layer−1), ``pos``,
        ``token``, ``value`` and ``normalised`` (value / sum over positions of that layer).
        Layers left out by ``layers=`` (NaN rows of ``values``) are not rows."""
        vals = self.values.detach().double().cpu()
        measured = [row for row in range(vals.shape[0]) if not torch.isnan(vals[row]).all()]
        vals = vals[measured]
        n = vals.shape[1]
        labels = list(self.labels) or [str(t) for t in self.tokens.tolist()]
        share = vals / vals.sum(-1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
        return pd.DataFrame(
            {
                "layer": [row + 1 for row in measured for _ in range(n)],
                "pos": list(range(n)) * len(measured),
                "token": labels * len(measured),
                "value": vals.flatten().numpy(),
                "normalised": share.flatten().numpy(),
            }
        )

    def _repr_html_(self) -> str:
        n_layers, n = self.values.shape
        probes = f", {self.n_probes} probes" if self.n_probes else ""
        measured = [r + 1 for r in range(n_layers) if not torch.isnan(self.values[r]).all()]
        layers = (
            f"layers={n_layers}"
            if len(measured) == n_layers
            else f"layers {measured} of {n_layers}"
        )
        head = (
            f"<b>Sensitivity</b> {self.model_name}: ‖∂h_{self.target}^(ℓ)/∂h_i^(0)‖_F, "
            f"{self.method}{probes}; {layers}, positions={n}, target={self.target}"
        )
        frame = self.to_dataframe().pivot(index="pos", columns="layer", values="value")
        frame.insert(0, "token", list(self.labels) or self.tokens.tolist())
        return frame_html(head, frame)

    def plot(self):
        """Sensitivity vs position, one line per layer, log y (plotly)."""
        import plotly.express as px

        frame = self.to_dataframe()
        frame = frame[frame["value"] > 0]
        return px.line(
            frame,
            x="pos",
            y="value",
            color="layer",
            hover_data=["token"],
            log_y=True,
            markers=True,
            title=f"Jacobian sensitivity of position {self.target} to each input ({self.method})",
            labels={"pos": "source position i", "value": "‖∂h_t^(ℓ)/∂h_i^(0)‖_F"},
        )


def token_sensitivity(
    model: HookedModel,
    tokens: Any,
    *,
    target: int = -1,
    method: str = "exact",
    n_probes: int = 64,
    seed: int = 0,
    chunk_size: int | None = None,
    progress: bool | None = None,
    intervention: Intervention = None,
    layers: Any = None,
    checkpoint: bool | None = None,
) -> Sensitivity:
    """Frobenius norm of ``∂h_target^(ℓ)/∂h_i^(0)`` for every layer ℓ and position i (PAPER §3).

    Example:
        >>> sens = token_sensitivity(model, "1 1 1 1 1", method="estimate", n_probes=32)
        >>> sens.values.shape  # [n_layers, pos]

    Args:
        model: a TransformerBridge or HookedTransformer (left unchanged).
        tokens: one sequence: text, ``[pos]`` or ``[1, pos]`` token ids.
        target: the receiving position (negative counts from the end).
        method: ``"exact"`` (``n_layers · d_model`` vector-Jacobian products) or ``"estimate"``
            (Hutchinson, ``n_layers · n_probes`` of them).
        n_probes: Gaussian probes per layer for ``"estimate"``.
        seed: seed of the probes (a private generator: the global RNG is not touched).
        chunk_size: cotangents per batched backward pass (bounds memory); default from a
            ~512 MiB budget.
        progress: show a progress bar over chunks (default: when there are more than 4).
        intervention: glasses active during the forward pass, e.g.
            ``functools.partial(sliding_window, window=16)`` (see ``glasses.applied``); the
            Jacobian is then that of the modified model.
        layers: the layers ℓ (1..n_layers, i.e. outputs of blocks ℓ−1; negative counts from
            the end) to measure; default all. Others are NaN in ``values``. Layer ℓ costs
            ℓ block backward passes per cotangent, so ``layers=[-1]`` alone is ~2/(L+1) of
            the work of all layers.
        checkpoint: activation checkpointing per block (recompute each block in the backward
            pass; same values to float rounding, ~1 extra forward per backward): the graph
            then holds one block's attention at a time instead of all of them. Default: on
            from 512 positions.

    Returns:
        :class:`Sensitivity` with ``values [n_layers, pos]`` (float32, float64 for a float64
        model).
    """
    info = _tl.model_info(model)
    toks = _tl.single_sequence(model, tokens, info)
    t = _validate.resolve_index(target, toks.shape[1], name="target")
    if method not in ("exact", "estimate"):
        raise InvalidArgumentError(f"method={method!r} must be 'exact' or 'estimate'")
    m, d, n_layers = t + 1, info.d_model, info.n_layers
    probes = _probes(n_probes, n_layers, d) if method == "estimate" else None
    seed = _validate.integer(seed, "seed")
    run = toks[:, : t + 1]
    device, dtype = _tl.model_device(model), _tl.model_dtype(model)
    chosen = _chosen_layers(layers, n_layers)
    if checkpoint is None:
        checkpoint = m >= 512
    checkpoint = _validate.flag(checkpoint, "checkpoint")

    if probes is None:  # cotangents per layer: one-hot coordinates, or Gaussian probes
        cot = torch.eye(d, dtype=dtype, device=device).expand(n_layers, d, d)
    else:
        gen = torch.Generator(device="cpu").manual_seed(seed)
        cot = torch.randn(n_layers, probes, d, generator=gen, dtype=torch.float64)
        cot = cot.to(device=device, dtype=dtype)
    if chunk_size is None:
        per_cotangent = 4 * m * (24 * d + 4 * info.n_heads * m)  # rough backward working set
        chunk_size = max(1, _CHUNK_BYTES // per_cotangent)
    chunk = _validate.integer(chunk_size, "chunk_size", minimum=1)

    jobs = [(layer, s) for layer in chosen for s in range(0, cot.shape[1], chunk)]
    show = _validate.progress_flag(progress, len(jobs) > 4)
    squares = torch.zeros(n_layers, m, dtype=torch.float64, device=device)
    try:
        with torch.enable_grad(), _tl.preserved(model, freeze=True):
            blocks = _tl.checkpointed_blocks(model) if checkpoint else contextlib.nullcontext()
            # The hooks stay on through the backward passes: a checkpointed block's
            # recomputation must see h^(0) replaced by the leaf again.
            with applied(model, intervention), blocks:
                with _forward_from_leaf(model, run, t, max(chosen) + 1) as (leaf, outputs):
                    for layer, s in tqdm(
                        jobs, desc="token_sensitivity", disable=not show, leave=False
                    ):
                        squares[layer] += _vjp_squares(
                            outputs[layer], leaf, cot[layer, s : s + chunk]
                        )
    finally:
        _tl.release_graphs(model)
    if probes is not None:
        squares /= probes
    out_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    values = torch.zeros(n_layers, toks.shape[1], dtype=out_dtype)
    values[:, :m] = squares.sqrt().to(out_dtype).cpu()
    skipped = [layer for layer in range(n_layers) if layer not in chosen]
    values[skipped] = float("nan")
    return Sensitivity(
        values=values,
        tokens=toks[0].cpu(),
        target=t,
        method=method,
        n_probes=probes,
        labels=_labels(model, toks[0]),
        model_name=info.name,
    )


def _vjp_squares(
    output: Float[Tensor, " d_model"], leaf: Tensor, cotangents: Float[Tensor, "chunk d_model"]
) -> Float[Tensor, " pos"]:
    """Σ over a chunk of cotangents u of ``(uᵀ ∂output/∂leaf)²`` per position (one batched
    backward pass: the graph is vmapped over the chunk)."""
    (grad,) = torch.autograd.grad(
        output, leaf, grad_outputs=cotangents, is_grads_batched=True, retain_graph=True
    )  # [chunk, 1, pos, d_model]: one VJP per cotangent
    return grad.double().square().sum((0, 1, 3))


@contextlib.contextmanager
def _forward_from_leaf(
    model: Any, run: Int[Tensor, "1 pos"], target: int, n_layers: int
) -> Iterator[tuple[Float[Tensor, "1 pos d_model"], list[Tensor]]]:
    """One grad-enabled forward through blocks 0..n_layers−1 with ``h^(0)`` replaced by a
    fresh leaf; yields the leaf and the target's residual ``[d_model]`` after each of those
    blocks, with the hooks still on (removed on exit, also on exceptions)."""
    name = _tl.resid_name(0)
    leaf = _tl.capture(model, run, [name], stop_at_layer=1)[name].requires_grad_(True)
    outputs: dict[int, Tensor] = {}

    def replace(x: Tensor, hook: Any) -> Tensor:
        return leaf

    def keeper(layer: int):
        def keep(x: Tensor, hook: Any) -> None:
            outputs.setdefault(layer, x[0, target])  # a recomputation must not replace it

        return keep

    hooks = [(name, replace)]
    hooks += [(_tl.resid_name(layer), keeper(layer)) for layer in range(1, n_layers + 1)]
    stop = n_layers if n_layers < _tl.model_info(model).n_layers else None
    with model.hooks(fwd_hooks=hooks):
        _tl.run_with_hooks(model, run, [], grad=True, freeze=True, stop_at_layer=stop)
        yield leaf, [outputs[layer] for layer in range(1, n_layers + 1)]


def _probes(n_probes: Any, n_layers: int, d_model: int) -> int:
    """``n_probes`` checked before the probes are drawn: all ``n_layers · n_probes · d_model``
    float64 values must fit in :data:`_PROBE_BYTES`."""
    most = max(1, _PROBE_BYTES // (8 * n_layers * d_model))
    return _validate.integer(
        n_probes, "n_probes", minimum=1, maximum=most,
        hint=f" (the probes of {n_layers} layers x d_model={d_model} must fit in "
        f"{_PROBE_BYTES >> 20} MiB; method='exact' needs only d_model={d_model} VJPs per layer)",
    )  # fmt: skip


def _chosen_layers(layers: Any, n_layers: int) -> list[int]:
    """Row indices (ℓ − 1) of the requested layers ℓ in 1..n_layers (negative from the end)."""
    if layers is None:
        return list(range(n_layers))
    rows = []
    for ell in _validate.int_list(layers, name="layers", minimum=None):
        if not (1 <= ell <= n_layers or -n_layers <= ell <= -1):
            raise InvalidArgumentError(
                f"layers contains {ell!r}: layers are 1..{n_layers} (outputs of blocks "
                f"0..{n_layers - 1}) or -1..-{n_layers} from the end"
            )
        rows.append(ell - 1 if ell > 0 else n_layers + ell)
    return sorted(set(rows))


def _labels(model: Any, ids: Tensor) -> tuple[str, ...]:
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        return tuple(str(i) for i in ids.tolist())
    return tuple(tokenizer.decode([i]) for i in ids.tolist())
