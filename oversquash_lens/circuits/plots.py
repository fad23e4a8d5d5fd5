"""Plotly views of the circuits results: a composition-score heat map and a bar chart of the
paths that push a token's logit most (docs/science.md §"Circuits framework")."""

from typing import Any

import torch

from ..errors import InvalidArgumentError

__all__ = ["composition_heatmap", "top_paths_bar"]


def composition_heatmap(comp: Any, *, relative: bool = False) -> Any:
    """Heat map of a :class:`~oversquash_lens.circuits.Composition`: rows are the writing
    head (layer·head), columns the reading head; pairs with ``l1 >= l2`` are blank. With
    ``relative`` the colour is score / random baseline."""
    import plotly.graph_objects as go

    n_layers, n_heads = comp.n_layers, comp.n_heads
    size = n_layers * n_heads
    grid = (comp.relative if relative else comp.scores).double().reshape(size, size).clone()
    layer_of = torch.arange(size) // n_heads
    grid[layer_of[:, None] >= layer_of[None, :]] = float("nan")  # masked pairs blank, not 0
    names = [f"L{i // n_heads}H{i % n_heads}" for i in range(size)]
    what = "score / random baseline" if relative else f"{comp.kind}-composition score"
    fig = go.Figure(
        go.Heatmap(
            z=grid.numpy(),
            x=names,
            y=names,
            colorscale="Viridis",
            colorbar={"title": what},
            hovertemplate="%{y} → %{x}: %{z:.3f}<extra></extra>",
        )
    )
    fig.update_layout(
        title=(
            f"{comp.kind}-composition of {comp.model_name} (random baseline {comp.baseline:.3f})"
        ),
        xaxis_title="reading head (later layer)",
        yaxis_title="writing head (earlier layer)",
        yaxis_autorange="reversed",
    )
    return fig


def top_paths_bar(exp: Any, token: Any, *, k: int = 20, order: int | None = 2) -> Any:
    """Horizontal bars: the ``k`` terms of a :class:`~oversquash_lens.circuits.PathExpansion`
    (of ``order``, 2 = virtual heads; None = every order) with the largest absolute logit
    contribution to ``token``, signed."""
    import plotly.graph_objects as go

    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InvalidArgumentError(f"k={k!r} must be a positive int")
    frame = exp.logit_contributions(token)
    if order is not None:
        frame = frame[frame["order"] == exp._order(order)]
    top = frame.reindex(frame["logit"].abs().sort_values(ascending=False).index).head(k)
    top = top.iloc[::-1]  # largest at the top of the chart
    tok = exp.token_id(token)
    text = exp.tokenizer.decode([tok]) if exp.tokenizer is not None else str(tok)
    fig = go.Figure(
        go.Bar(
            x=top["logit"],
            y=top["term"],
            orientation="h",
            marker_color=["#1f77b4" if v >= 0 else "#d62728" for v in top["logit"]],
        )
    )
    which = "virtual heads" if order == 2 else "terms" if order is None else f"order-{order} paths"
    fig.update_layout(
        title=f"Top {which} for {text!r} at position {exp.target} ({exp.model_name})",
        xaxis_title="logit contribution (frozen final norm)",
        yaxis_title="path",
        height=max(300, 22 * len(top) + 120),
    )
    return fig
