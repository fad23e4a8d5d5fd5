"""The over-squashing profile of one prompt: every §3/§5 measure side by side (PAPER §3, §5).

Seen from one target token, for every source position: the number of causal paths (log, both
edge conventions), the attention rollout, the Theorem 5.1 path-sum bound with the model's real
attention and β from its residual norms, and the measured Jacobian sensitivity. Theory says
early tokens have many more paths; the profile shows how far the model's attention and its
actual sensitivity follow that, and ``correlations()`` ranks the agreement. Opt-in
(``route_tau=τ``): the information-flow routes' per-source totals (:mod:`.routes`) as a
column ``routes``.
"""

from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from .. import _tl, _validate
from .._display import frame_html
from ..errors import InvalidArgumentError
from .paths import path_counts
from .rollout import attention_rollout, oversquashing_bound, resolve_beta
from .routes import FlowRoutes, check_tau, information_flow
from .sensitivity import Sensitivity, token_sensitivity

__all__ = ["OversquashProfile", "oversquash_profile"]


def learned_sinks_of(model: Any) -> str:
    """``"keep"`` for a model with learned sink logits (docs/science.md §11), else ``"auto"``
    (rows must sum to 1): what the profile passes to rollout and bound."""
    from .._tl.cache import resolve_learned_sinks

    return "keep" if resolve_learned_sinks("auto", model) == "keep" else "auto"


def _as_array(values: Any) -> Any:
    return torch.as_tensor(values).numpy()


MEASURES = ("log_paths", "log_paths_residual", "rollout", "bound", "sensitivity")


@dataclass(frozen=True)
class OversquashProfile:
    """Per-position over-squashing measures toward ``target`` (all layers kept).

    Attributes:
        rollout: ``[layer, pos]`` attention rollout (row ℓ−1 = after ℓ layers).
        bound: ``[layer, pos]`` Theorem 5.1 path sum with ᾱ = α/β + I (constant C excluded).
        beta: ``[layer, pos]`` the β used per layer and key position.
        sensitivity: the measured :class:`Sensitivity` (``values [layer, pos]``).
        tokens: the ``[pos]`` token ids; ``labels`` their text.
        target: absolute target position.
        layer: the depth ℓ (1..n_layers) shown by default (the last).
        residual: the rollout's residual weight.
        routes: the :class:`FlowRoutes` of the prompt when asked for (``route_tau``), else None;
        route_tau: the edge threshold τ of the ``routes`` column.
    """

    rollout: Float[Tensor, "layer pos"]
    bound: Float[Tensor, "layer pos"]
    beta: Float[Tensor, "layer pos"]
    sensitivity: Sensitivity
    tokens: Int[Tensor, " pos"]
    target: int
    layer: int
    residual: float = 0.5
    labels: tuple[str, ...] = ()
    model_name: str = ""
    routes: FlowRoutes | None = None
    route_tau: float | None = None

    @property
    def n_layers(self) -> int:
        return self.rollout.shape[0]

    @property
    def measures(self) -> tuple[str, ...]:
        """The measure columns: :data:`MEASURES`, plus ``"routes"`` when computed."""
        return MEASURES + (("routes",) if self.routes is not None else ())

    def _depth(self, layer: int | None) -> int:
        return _depth(self.layer if layer is None else layer, self.n_layers)

    def to_dataframe(self, layer: int | None = None) -> pd.DataFrame:
        """One row per position at depth ``layer`` (1..n_layers, -1 = last; default
        ``self.layer``): ``pos``, ``token``, ``log_paths`` (``M^ℓ``), ``log_paths_residual``
        (``(M+I)^ℓ``), ``rollout``, ``bound`` and ``sensitivity``; with ``route_tau`` also
        ``routes``, the routes' per-source totals toward node ``(ℓ, target)``
        (:meth:`FlowRoutes.source_totals`)."""
        depth = self._depth(layer)
        n = self.tokens.shape[0]
        row = depth - 1
        frame = pd.DataFrame(
            {
                "pos": range(n),
                "token": list(self.labels) or self.tokens.tolist(),
                "log_paths": _as_array(path_counts(n, depth, target=self.target, log=True)),
                "log_paths_residual": _as_array(
                    path_counts(n, depth, target=self.target, residual_edges=True, log=True)
                ),
                "rollout": self.rollout[row].double().cpu().numpy(),
                "bound": self.bound[row].double().cpu().numpy(),
                "sensitivity": self.sensitivity.values[row].double().cpu().numpy(),
            }
        )
        if self.routes is not None:
            tau = 0.0 if self.route_tau is None else self.route_tau
            frame["routes"] = self.routes.source_totals(tau, layer=depth).numpy()
        return frame

    def _ranked(self, layer: int | None, exclude_bos: bool, exclude_target: bool) -> pd.DataFrame:
        _validate.flag(exclude_bos, "exclude_bos")
        _validate.flag(exclude_target, "exclude_target")
        frame = self.to_dataframe(layer).iloc[: self.target + 1]
        if exclude_bos:
            frame = frame.iloc[1:]
        if exclude_target:
            frame = frame[frame["pos"] != self.target]
        return frame

    @property
    def _ranked_measures(self) -> list[str]:
        # log_paths_residual ranks positions exactly like log_paths (both decrease with the
        # distance to the target), so it would only repeat that column.
        return [m for m in self.measures if m != "log_paths_residual"]

    def correlations(
        self, layer: int | None = None, *, exclude_bos: bool = True, exclude_target: bool = True
    ) -> pd.DataFrame:
        """Spearman rank correlation between the measures over the source positions
        ``0..target`` — by default without the first token (every measure puts an outlier
        there: the sink / the most paths) and without the target itself (1 path, itself in
        the residual), which would otherwise dominate the ranks. ``log_paths_residual`` is
        left out: it ranks positions exactly as ``log_paths`` does (docs/science.md §3)."""
        frame = self._ranked(layer, exclude_bos, exclude_target)
        return pd.DataFrame(frame[self._ranked_measures]).corr(method="spearman")

    def agreement(
        self,
        layer: int | None = None,
        *,
        n_boot: int = 1000,
        seed: int = 0,
        exclude_bos: bool = True,
        exclude_target: bool = True,
    ) -> pd.DataFrame:
        """How well each predictor ranks the measured sensitivity: Spearman ρ with a 95%
        percentile bootstrap interval over the source positions (``n_boot`` resamples, fixed
        ``seed``), and the numerically-zero share of each predictor (values below 1e-6 of its
        maximum over all positions, the first token included: ranks among them are rounding noise,
        as for rollout at depth). When the
        sensitivity is an estimate, its probe noise adds to this interval (docs/science.md §3)."""
        _validate.integer(n_boot, "n_boot", minimum=10)
        _validate.integer(seed, "seed")
        frame = self._ranked(layer, exclude_bos, exclude_target)
        ranks = frame[self._ranked_measures].rank()
        gen = torch.Generator().manual_seed(seed)
        n = len(frame)
        rows = []
        for name in [m for m in self._ranked_measures if m != "sensitivity"]:
            rho = float(ranks[name].corr(ranks["sensitivity"]))  # Spearman = Pearson on ranks
            boot = []
            x, y = ranks[name].to_numpy(), ranks["sensitivity"].to_numpy()
            for _ in range(n_boot):
                idx = torch.randint(0, n, (n,), generator=gen).numpy()
                xs, ys = pd.Series(x[idx]).rank(), pd.Series(y[idx]).rank()
                boot.append(float(xs.corr(ys)))
            lo, hi = pd.Series(boot).dropna().quantile([0.025, 0.975]).tolist() or [None, None]
            peak = float(self.to_dataframe(layer)[name].abs().max())  # BOS included
            tiny = float((frame[name].abs() < 1e-6 * peak).mean()) if n else float("nan")
            rows.append({"predictor": name, "spearman": rho, "ci_low": lo, "ci_high": hi,
                         "positions": n, "numerically_zero": tiny})  # fmt: skip
        return pd.DataFrame(rows)

    def _repr_html_(self) -> str:
        head = (
            f"<b>OversquashProfile</b> {self.model_name}: target={self.target}, "
            f"layer {self.layer} of {self.n_layers}, sensitivity {self.sensitivity.method}"
        )
        corr = frame_html("Spearman correlations between measures", self.correlations())
        return frame_html(head, self.to_dataframe().set_index("pos")) + corr

    def plot(self, layer: int | None = None):
        """Every measure vs source position in stacked panels (plotly; bound and sensitivity
        on log axes)."""
        from plotly.subplots import make_subplots

        depth = self._depth(layer)
        frame = self.to_dataframe(depth)
        measures = self.measures
        fig = make_subplots(rows=len(measures), cols=1, shared_xaxes=True, subplot_titles=measures)
        for i, name in enumerate(measures, start=1):
            fig.add_scatter(
                x=frame["pos"],
                y=frame[name],
                text=frame["token"].astype(str),
                mode="lines+markers",
                name=name,
                row=i,
                col=1,
            )
            if name in ("bound", "sensitivity"):
                fig.update_yaxes(type="log", row=i, col=1)
        fig.update_xaxes(title_text="source position i", row=len(measures), col=1)
        fig.update_layout(
            height=180 * len(measures),
            showlegend=False,
            title=f"Over-squashing profile toward position {self.target} (depth {depth})",
        )
        return fig


def oversquash_profile(
    model: Any,
    tokens: Any,
    *,
    target: int = -1,
    method: str = "estimate",
    n_probes: int = 64,
    seed: int = 0,
    residual: float = 0.5,
    beta: Any = "residual",
    layer: int = -1,
    chunk_size: int | None = None,
    route_tau: float | None = None,
) -> OversquashProfile:
    """Path counts, rollout, Theorem 5.1 bound and measured sensitivity for one prompt.

    Example:
        >>> prof = oversquash_profile(model, "1 1 1 1 1 1", method="exact")
        >>> prof.to_dataframe()  # one row per position; prof.correlations() ranks agreement

    Args:
        model: a TransformerBridge or HookedTransformer (left unchanged).
        tokens: one sequence (text, ``[pos]`` or ``[1, pos]``).
        target: receiving position (default the last token).
        method, n_probes, seed, chunk_size: passed to :func:`token_sensitivity`.
        residual: the rollout's residual weight.
        beta: β of the bound: ``"residual"`` (default) uses, per layer and key position, the
            divisor of the model's pre-attention norm — sqrt(var + ε) (LayerNorm) or
            sqrt(mean square + ε) (RMSNorm) of the residual entering the block; or a float,
            ``[layer]`` or ``[layer, pos]`` values.
        layer: the depth shown by default (1..n_layers, -1 = the last).
        route_tau: None (default: the profile as before) or an edge threshold τ in ``[0, 1]``:
            add the column ``routes``, the per-source totals of :func:`information_flow`'s
            route graph at that τ (one more forward pass; nodes computed as the walk reaches
            them). Other columns are unchanged bitwise.
    """
    info = _tl.require_attention(model)
    toks = _tl.single_sequence(model, tokens, info)
    n_layers = info.n_layers
    depth = _depth(layer, n_layers)
    if route_tau is not None:
        route_tau = check_tau(route_tau)
    names = [_tl.pattern_name(b) for b in range(n_layers)]
    by_norm = isinstance(beta, str)
    if by_norm and beta != "residual":
        raise InvalidArgumentError(f"beta={beta!r} must be 'residual', a float or a tensor")
    if by_norm:
        names += [_tl.resid_name(b) for b in range(n_layers)]
    store = _tl.capture(model, toks, names)
    patterns = torch.stack([store[_tl.pattern_name(b)][0] for b in range(n_layers)])
    if by_norm:
        resid = torch.stack([store[_tl.resid_name(b)][0] for b in range(n_layers)]).double()
        if _tl.centres_before_norm(model):
            resid = resid - resid.mean(-1, keepdim=True)
        # The norm divides by sqrt(mean(x²) + eps): with eps, a zero residual (e.g. a padding
        # token whose embedding row is 0) gets the norm's own divisor, not β = 0.
        beta = (resid.square().mean(-1) + _tl.norm_eps(model)).sqrt().cpu()
    sinks = learned_sinks_of(model)  # GPT-OSS: the sink's share is kept (docs/science.md §11)
    rollout = attention_rollout(patterns, target=target, residual=residual, learned_sinks=sinks)
    bound = oversquashing_bound(patterns, target=target, beta=beta, learned_sinks=sinks)
    beta_used = resolve_beta(beta, n_layers, toks.shape[1]).clone()
    sens = token_sensitivity(
        model,
        toks,
        target=target,
        method=method,
        n_probes=n_probes,
        seed=seed,
        chunk_size=chunk_size,
    )
    routes = None
    if route_tau is not None:
        routes = information_flow(model, toks, target=sens.target)
    return OversquashProfile(
        rollout=rollout.cpu(),
        bound=bound.cpu(),
        beta=beta_used,
        sensitivity=sens,
        tokens=toks[0].cpu(),
        target=sens.target,
        layer=depth,
        residual=float(residual),
        labels=sens.labels,
        model_name=info.name,
        routes=routes,
        route_tau=route_tau,
    )


def _depth(layer: int, n_layers: int) -> int:
    """A depth 1..n_layers from ``layer`` (negative counts from the last layer)."""
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise InvalidArgumentError(f"layer={layer!r} must be an int in 1..{n_layers} (or -1)")
    depth = layer + n_layers + 1 if layer < 0 else layer
    if not 1 <= depth <= n_layers:
        raise InvalidArgumentError(f"layer={layer} is out of range 1..{n_layers} (or -1)")
    return depth
