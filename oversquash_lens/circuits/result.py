"""The result of :func:`oversquash_lens.circuits.path_expansion` and its aggregations
(docs/science.md §"Circuits framework")."""

import html
import numbers
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from .._display import frame_html
from ..errors import InvalidArgumentError, InvalidTokensError

__all__ = ["PathExpansion", "path_label"]

Path = tuple[tuple[int, int], ...]


def path_label(path: Path, source: str = "embed") -> str:
    """``()`` → ``"embed"``, ``((0, 3),)`` → ``"L0H3"``, ``((0, 3), (1, 5))`` →
    ``"L0H3 → L1H5"``; another source is named first: ``"MLP2 → L4H1"``."""
    heads = [f"L{layer}H{head}" for layer, head in path]
    return " → ".join(heads if source == "embed" and heads else [source, *heads])


@dataclass(frozen=True)
class PathExpansion:
    """The target's final residual split into paths (see :mod:`.expansion`).

    Attributes:
        sources: per term, where its path starts: ``"embed"`` (token + position embedding) or
            ``"MLP3"`` (the write of block 3's MLP, listed with ``mlp_order``).
        paths: one tuple of ``(layer, head)`` per term, in the row order of ``vectors``
            (``()``: the source itself, e.g. the direct path of the embedding).
        vectors: ``[term, d_model]``, each path's contribution to the residual.
        remainder_parts: ``higher_order`` (embedding paths longer than ``max_order``),
            ``attention_bias`` (paths started at b_O, b_V or a norm's β) and ``mlp`` (paths
            started at an MLP output, beyond ``mlp_order`` when that is set); each
            ``[d_model]``; they sum to :attr:`remainder`.
        listed_check: what the listed terms add up to, computed the other way (propagating
            each order through all positions); compare with ``vectors.sum(0)``.
        residual: the measured ``hook_resid_post`` of the last block at the target.
        by_position: per source kind (``"embed"``, and ``"mlp"`` with ``mlp_order``) an
            ``[order, pos, d_model]`` tensor: the sum of that kind's order-k terms split by the
            source position whose embedding (MLP write) they carry.
        final_scale, final_gamma, final_beta, final_centres: the final norm frozen at the
            target (divisor, scale, bias, LayerNorm centring), for logit contributions.
        w_u, b_u: the model's unembedding (a view, not a copy).
    """

    sources: tuple[str, ...]
    paths: tuple[Path, ...]
    vectors: Float[Tensor, "term d_model"]
    remainder_parts: dict[str, Tensor]
    listed_check: Float[Tensor, " d_model"]
    residual: Float[Tensor, " d_model"]
    by_position: dict[str, Tensor]
    tokens: Int[Tensor, " pos"]
    target: int
    max_order: int
    mlp_order: int | None
    final_scale: float
    final_gamma: Tensor | None
    final_beta: Tensor | None
    final_centres: bool
    w_u: Float[Tensor, "d_model d_vocab"] = field(repr=False)
    b_u: Tensor | None = field(repr=False)
    labels: tuple[str, ...] = ()
    model_name: str = ""
    tokenizer: Any = field(default=None, repr=False, compare=False)

    # ------------------------------------------------------------------ basic facts
    @property
    def remainder(self) -> Float[Tensor, " d_model"]:
        """Everything not listed term by term; ``vectors.sum(0) + remainder ≈ residual``."""
        return sum(self.remainder_parts.values(), torch.zeros_like(self.residual))

    @property
    def orders(self) -> Int[Tensor, " term"]:
        return torch.tensor([len(p) for p in self.paths])

    @property
    def term_labels(self) -> tuple[str, ...]:
        return tuple(path_label(p, s) for p, s in zip(self.paths, self.sources))

    @property
    def kinds(self) -> tuple[str, ...]:
        """Per term ``"embed"`` or ``"mlp"``."""
        return tuple("embed" if s == "embed" else "mlp" for s in self.sources)

    def _groups(self) -> list[tuple[str, Tensor]]:
        """``(name, row mask)`` per (source kind, order): ``order_k`` for the embedding's
        paths, ``mlp_order_k`` for MLP-started ones."""
        kinds, orders = self.kinds, self.orders
        is_mlp = torch.tensor([k == "mlp" for k in kinds], dtype=torch.bool)
        out = [(f"order_{k}", ~is_mlp & (orders == k)) for k in range(self.max_order + 1)]
        if self.mlp_order is not None:
            out += [(f"mlp_order_{k}", is_mlp & (orders == k)) for k in range(self.mlp_order + 1)]
        return out

    def _relative(self, gap: Tensor) -> float:
        scale = float(self.residual.double().norm())
        return float(gap.double().norm()) / max(scale, 1e-30)

    @property
    def reconstruction_error(self) -> float:
        """‖Σ terms + remainder − measured residual‖ / ‖residual‖ (the frozen linear model's
        exactness; float rounding only, ~1e-7..1e-5)."""
        return self._relative(self.vectors.sum(0) + self.remainder - self.residual)

    @property
    def consistency_error(self) -> float:
        """‖Σ terms − :attr:`listed_check`‖ / ‖residual‖ (term-by-term vs propagated)."""
        return self._relative(self.vectors.sum(0) - self.listed_check)

    # ------------------------------------------------------------------ logits
    def token_id(self, token: Any) -> int:
        """A token id from an int or a one-token string (needs the model's tokenizer)."""
        d_vocab = self.w_u.shape[1]
        if isinstance(token, str):
            if self.tokenizer is None:
                raise InvalidTokensError(f"token={token!r} is text but the model has no tokenizer")
            ids = self.tokenizer.encode(token, add_special_tokens=False)
            if len(ids) != 1:
                raise InvalidTokensError(f"token={token!r} is {len(ids)} tokens {ids}, not one")
            return int(ids[0])
        if isinstance(token, Tensor) and token.numel() == 1 and not token.is_floating_point():
            token = int(token)
        if isinstance(token, bool) or not isinstance(token, numbers.Integral):
            raise InvalidTokensError(f"token={token!r} must be a token id (int) or a string")
        if not 0 <= int(token) < d_vocab:
            raise InvalidTokensError(f"token={token} is outside the vocabulary [0, {d_vocab})")
        return int(token)

    def logit_direction(self, token: Any, versus: Any | None = None) -> Float[Tensor, " d_model"]:
        """``u`` with ``logit contribution of v = v · u``: the token's unembedding column seen
        through the final norm frozen at the target, ``C (γ ⊙ W_U[:, token]) / σ``; with
        ``versus``, the direction of the logit difference ``logit(token) − logit(versus)``."""
        col = self.w_u[:, self.token_id(token)].detach().double().cpu()
        if versus is not None:
            col = col - self.w_u[:, self.token_id(versus)].detach().double().cpu()
        if self.final_gamma is not None:
            col = col * self.final_gamma.double()
        if self.final_centres:
            col = col - col.mean()
        return col / self.final_scale

    def logit_constant(self, token: Any, versus: Any | None = None) -> float:
        """The part of the logit no path carries: ``β · W_U[:, token] + b_U[token]`` (minus
        the same for ``versus``)."""
        value = 0.0
        for tok, sign in ((token, 1.0), (versus, -1.0)):
            if tok is None:
                continue
            tok = self.token_id(tok)
            if self.final_beta is not None:
                col = self.w_u[:, tok].detach().double().cpu()
                value += sign * float(self.final_beta.double() @ col)
            if self.b_u is not None:
                value += sign * float(self.b_u[tok])
        return value

    def _logits(self, token: Any, versus: Any | None = None) -> Tensor:
        return self.vectors.double() @ self.logit_direction(token, versus)

    def logit_contributions(self, token: Any, versus: Any | None = None) -> pd.DataFrame:
        """One row per term — ``term``, ``order``, ``logit`` (its contribution to the token's
        logit through the frozen final norm; to ``logit(token) − logit(versus)`` with
        ``versus``) — largest first. Remainder parts and constant: :meth:`logit_breakdown`."""
        frame = pd.DataFrame(
            {
                "term": self.term_labels,
                "source": self.sources,
                "order": self.orders.numpy(),
                "logit": self._logits(token, versus).numpy(),
            }
        )
        return frame.sort_values("logit", ascending=False, kind="stable").reset_index(drop=True)

    def logit_breakdown(self, token: Any, versus: Any | None = None) -> pd.Series:
        """The token's logit (or ``logit(token) − logit(versus)``) split into: each order's
        total, each remainder part, the constant; ``total`` (their sum) and ``model_logit``
        (from the measured residual; the model's own value up to any final soft-capping)."""
        u = self.logit_direction(token, versus)
        logits = self._logits(token, versus)
        parts = {name: float(logits[mask].sum()) for name, mask in self._groups()}
        parts |= {name: float(v.double() @ u) for name, v in self.remainder_parts.items()}
        parts["constant"] = self.logit_constant(token, versus)
        parts["total"] = sum(parts.values())
        parts["model_logit"] = float(self.residual.double() @ u) + parts["constant"]
        return pd.Series(parts, name="logit")

    # ------------------------------------------------------------------ tables
    def _scores(self, vectors: Tensor, token: Any | None) -> dict[str, Any]:
        v = vectors.double()
        x = self.residual.double()
        out = {"norm": v.norm(dim=-1).numpy(), "resid_share": (v @ x / (x @ x)).numpy()}
        if token is not None:
            out["logit"] = (v @ self.logit_direction(token)).numpy()
        return out

    def to_dataframe(self, token: Any | None = None) -> pd.DataFrame:
        """One row per term (rows of :attr:`vectors`): ``term`` (``"L0H3 → L1H5"``),
        ``source``, ``order`` (number of heads), ``norm``, ``resid_share`` (v · x / ‖x‖², sums
        to 1 with the remainder) and, with a ``token``, ``logit``."""
        frame = pd.DataFrame(
            {"term": self.term_labels, "source": self.sources, "order": self.orders.numpy()}
        )
        return frame.assign(**self._scores(self.vectors, token))

    def by_path(
        self, token: Any | None = None, *, order: int | None = None, source: str | None = None
    ) -> pd.DataFrame:
        """:meth:`to_dataframe`, optionally of one order and one source kind (``"embed"`` or
        ``"mlp"``), sorted by ``logit`` (with a token) or by ``norm``."""
        frame: Any = self.to_dataframe(token)
        if order is not None:
            frame = frame[frame["order"] == self._order(order)]
        if source is not None:
            if source not in ("embed", "mlp"):
                raise InvalidArgumentError(f"source={source!r} must be 'embed' or 'mlp'")
            frame = frame[[k == source for k in self._kind_of(frame)]]
        key = "logit" if token is not None else "norm"
        return frame.sort_values(key, ascending=False, kind="stable").reset_index(drop=True)

    @staticmethod
    def _kind_of(frame: pd.DataFrame) -> list[str]:
        return ["embed" if s == "embed" else "mlp" for s in frame["source"]]

    def by_order(self, token: Any | None = None) -> pd.DataFrame:
        """Rows ``order_0 … order_k`` (sum of the embedding's order-k terms), ``mlp_order_k``
        (with ``mlp_order``) and the remainder parts."""
        groups = self._groups()
        sums = [self.vectors[mask].sum(0) for _, mask in groups]
        stacked = torch.stack(sums + list(self.remainder_parts.values()))
        rows = [name for name, _ in groups] + list(self.remainder_parts)
        return pd.DataFrame({"part": rows, **self._scores(stacked, token)})

    def by_source_position(self, token: Any | None = None) -> pd.DataFrame:
        """One row per (source kind, order, source position): that kind's order-k terms
        restricted to what they carry from that position's embedding (MLP write)."""
        labels = list(self.labels) or [str(i) for i in self.tokens.tolist()]
        frames = []
        for kind, grid in self.by_position.items():
            n_orders, n, _ = grid.shape
            frame = pd.DataFrame(
                {
                    "source": kind,
                    "order": [k for k in range(n_orders) for _ in range(n)],
                    "pos": list(range(n)) * n_orders,
                    "token": labels[:n] * n_orders,
                }
            )
            frames.append(frame.assign(**self._scores(grid.reshape(n_orders * n, -1), token)))
        return pd.concat(frames, ignore_index=True)

    def _order(self, order: Any) -> int:
        top = max(self.max_order, -1 if self.mlp_order is None else self.mlp_order)
        if isinstance(order, bool) or not isinstance(order, int):
            raise InvalidArgumentError(f"order={order!r} must be an int")
        if not 0 <= order <= top:
            raise InvalidArgumentError(f"order={order} is not in 0..{top}")
        return order

    def _repr_html_(self) -> str:
        title = (
            f"<b>PathExpansion</b> {html.escape(self.model_name)}: target {self.target} "
            f"({html.escape(self.labels[self.target] if self.labels else '')!s}), "
            f"{len(self.paths)} terms up to order {self.max_order}; reconstruction error "
            f"{self.reconstruction_error:.2e}"
        )
        return frame_html(title, self.by_order())

    def plot(self, token: Any, *, k: int = 20, order: int | None = 2) -> Any:
        """Bar chart of the ``k`` terms (of ``order``; None: all) with the largest logit
        contribution to ``token`` (see :func:`oversquash_lens.circuits.plots.top_paths_bar`)."""
        from .plots import top_paths_bar

        return top_paths_bar(self, token, k=k, order=order)
