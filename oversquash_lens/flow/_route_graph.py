"""The machinery behind :mod:`.routes`: proximity importances of a node's parts computed in
chunks, one block of the route-graph walk, and the plotly drawing of the graph
(docs/science.md §"Contribution routes and attention flow")."""

from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .. import _validate

#: Key positions per chunk of value vectors.
KEY_CHUNK = 64
_OTHER = ("residual", "bias", "mlp")


class _Level(NamedTuple):
    """Importances of the parts of one node at one granularity: ``attn [group, t+1]`` (group =
    head, or 1 for the heads summed) and ``other [3]`` (residual, attention bias, MLP)."""

    attn: Tensor
    other: Tensor


class _Node(NamedTuple):
    heads: _Level  # one part per head and source
    tokens: _Level  # one part per source, heads summed


class Block:
    """Kept edges of one block: from every reached node ``(b + 1, t)`` with its flow weight, the
    parts of importance ``> tau``; ``sources [pos]`` is the flow reaching layer ``b``."""

    def __init__(
        self,
        routes: Any,
        b: int,
        tau: float,
        weight: Tensor,
        levels: dict[int, _Level],
        by_head: bool,
    ):
        self.routes, self.b, self.levels, self.by_head = routes, b, levels, by_head
        self.sources = torch.zeros_like(weight)
        self.kept: list[tuple[int, Tensor, Tensor, Tensor]] = []  # (t, attn idx, other idx, w)
        for t, level in levels.items():
            w = weight[t]
            attn = (level.attn > tau).nonzero()  # [kept, 2]: (head or 0, source)
            other = (level.other > tau).nonzero().flatten()
            other = other[other != 1]  # the bias has no source node
            vals = level.attn[attn[:, 0], attn[:, 1]].double()
            self.sources.index_add_(0, attn[:, 1], w * vals)
            self.sources[t] += w * level.other[other].double().sum()
            self.kept.append((t, attn, other, w))

    def rows(self) -> Iterator[tuple]:
        """``(block, head, source, target, importance, norm, flow)`` per kept part."""
        r, b = self.routes, self.b
        if not self.kept:
            return
        vnorm = r._value_norms(b) if self.by_head else None
        for t, attn, other, w in self.kept:
            level = self.levels[t]
            inv = float(r._inv_scale(b, [t])[0])
            for h, j in attn.tolist():
                imp = float(level.attn[h, j])
                if vnorm is not None:
                    norm = r.causal_patterns._entry(b, h, t, j) * inv * float(vnorm[h, j])
                else:
                    norm = float(r._head_parts(b, t, j, j + 1).sum(0).norm())
                yield b, h if self.by_head else "attn", j, t, imp, norm, float(w) * imp
            for k in other.tolist():
                vec = r.resid[b, t] if k == 0 else r.mlp_out[b, t]
                imp = float(level.other[k])
                yield b, _OTHER[k], t, t, imp, float(vec.norm()), float(w) * imp


def check_tau(tau: Any) -> float:
    """The edge threshold τ as a float in ``[0, 1]`` (else InvalidArgumentError naming it)."""
    return _validate.number(tau, "tau", minimum=0.0, maximum=1.0)


def node_importances(routes: Any, b: int, positions: list[int]) -> Iterator[tuple[int, _Node]]:
    """Proximity importances of the parts of nodes ``(b + 1, p)`` for the sorted
    ``positions``, in chunks of ``[head, query, key, d_model]`` of at most
    ``routes.chunk_elements`` elements."""
    r = routes
    x = r.resid[b + 1, positions]  # [q, d] the sums
    x_l1 = x.abs().sum(-1)
    other = torch.stack([r.resid[b, positions], r._bias(b, positions), r.mlp_out[b, positions]])
    prox_other = (x_l1 - (other - x).abs().sum(-1)).clamp_min(0).T  # [q, 3]
    n_keys = positions[-1] + 1
    prox_heads = torch.zeros(r.n_heads, len(positions), n_keys, device=x.device)
    prox_tokens = torch.zeros(1, len(positions), n_keys, device=x.device)
    pos = torch.tensor(positions, device=x.device)
    inv = r._inv_scale(b, positions)
    d = x.shape[-1]
    for k0 in range(0, n_keys, KEY_CHUNK):
        k1 = min(n_keys, k0 + KEY_CHUNK)
        vw = r._value_out(b, k0, k1)  # [head, c, d]
        first = int(torch.searchsorted(pos, k0))  # queries that can see these keys
        rows = max(1, r.chunk_elements // ((r.n_heads + 1) * (k1 - k0) * d))
        for q0 in range(first, len(positions), rows):
            q1 = min(len(positions), q0 + rows)
            alpha = r.causal_patterns._rows(b, pos[q0:q1], k0, k1)  # [head, qq, c]
            alpha = alpha * inv[q0:q1, None]
            parts = alpha[..., None] * vw[:, None]  # [head, qq, c, d]
            summed = parts.sum(0, keepdim=True)  # heads summed: one part per source
            sums, norms = x[None, q0:q1, None], x_l1[None, q0:q1, None]
            prox_tokens[:, q0:q1, k0:k1] = _proximity(summed, sums, norms)
            prox_heads[:, q0:q1, k0:k1] = _proximity(parts, sums, norms)
    levels = [_normalise(prox, prox_other.clone()) for prox in (prox_heads, prox_tokens)]
    for i, p in enumerate(positions):
        heads, tokens = (_Level(a[:, i, : p + 1].cpu(), o[i].cpu()) for a, o in levels)
        yield p, _Node(heads, tokens)


def _proximity(parts: Tensor, sums: Tensor, sum_l1: Tensor) -> Tensor:
    """``max(‖x‖₁ − ‖z − x‖₁, 0)`` over the last axis; overwrites ``parts``."""
    return (sum_l1 - parts.sub_(sums).abs_().sum(-1)).clamp_min_(0)


def _normalise(prox_attn: Tensor, prox_other: Tensor) -> tuple[Tensor, Tensor]:
    """Divide the proximities of every node (``[group, q, key]`` and ``[q, 3]``) by their sum
    over the node's parts, in place (a node whose parts all have proximity 0 stays 0)."""
    total = prox_attn.sum((0, 2)) + prox_other.sum(-1)
    total = torch.where(total > 0, total, torch.ones_like(total))
    prox_attn /= total[None, :, None]
    prox_other /= total[:, None]
    return prox_attn, prox_other


def route_figure(routes: Any, graph: Any, tau: float) -> Any:
    """The plotly figure of a route graph (:meth:`FlowRoutes.plot`)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    colours = {"attention": "#1f77b4", "mlp": "#ff7f0e", "residual": "#999999"}
    buckets: dict[tuple[str, int], tuple[list, list]] = {}
    mids: tuple[list, list, list] = ([], [], [])
    for (b, j), (_, t), data in graph.edges(data=True):
        parts = data["parts"]
        kind = max(parts, key=parts.get)
        kind = kind if kind in ("mlp", "residual") else "attention"
        width = 1 + min(8, int(round(12 * data["importance"])))
        xs, ys = buckets.setdefault((kind, width), ([], []))
        xs += [j, t, None]
        ys += [b, b + 1, None]
        mids[0].append((j + t) / 2)
        mids[1].append(b + 0.5)
        mids[2].append(
            "<br>".join(f"{k}: {v:.3f}" for k, v in sorted(parts.items(), key=lambda x: -x[1]))
        )
    for (kind, width), (xs, ys) in sorted(buckets.items()):
        fig.add_scatter(
            x=xs,
            y=ys,
            mode="lines",
            line={"width": width, "color": colours[kind]},
            name=kind,
            legendgroup=kind,
            showlegend=False,
            hoverinfo="skip",
            opacity=0.7,
        )
    for kind, colour in colours.items():  # one legend entry per kind
        fig.add_scatter(x=[None], y=[None], mode="lines", line={"color": colour}, name=kind)
    fig.add_scatter(
        x=mids[0], y=mids[1], text=mids[2], mode="markers", marker={"size": 4, "opacity": 0},
        hoverinfo="text", showlegend=False,
    )  # fmt: skip
    nodes = list(graph.nodes(data=True))
    fig.add_scatter(
        x=[p for (_, p), _ in nodes],
        y=[lay for (lay, _), _ in nodes],
        text=[f"layer {k[0]}, pos {k[1]} {d['token']!r}: flow {d['flow']:.3f}" for k, d in nodes],
        mode="markers",
        marker={"size": 7, "color": "black"},
        hoverinfo="text",
        showlegend=False,
    )
    ticks = sorted({p for (_, p) in graph.nodes})
    fig.update_xaxes(
        tickvals=ticks, ticktext=[f"{p}: {routes._label(p)}" for p in ticks], title="position"
    )
    fig.update_yaxes(title="layer (residual after ℓ blocks)", dtick=1)
    fig.update_layout(
        title=f"Information flow routes to position {routes.target} (τ={tau})",
        height=max(400, 22 * (routes.n_layers + 1)),
    )
    return fig
