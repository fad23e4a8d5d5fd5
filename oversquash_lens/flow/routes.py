"""Information flow routes (Ferrando & Voita 2024, arXiv 2403.00824): the residual stream
decomposed edge by edge, and the route graph of the edges that matter for one target token
(docs/science.md §"Contribution routes and attention flow").

Block ``b`` adds to the residual of position ``t``: every head's ``α^{b,h}_{t,j} · v^{b,h}_j
W_O^{b,h}`` for every source ``j ≤ t``, the attention bias ``b_O``, and the MLP output at ``t``.
So the residual after ``b + 1`` blocks is exactly

    x^{b+1}_t = x^b_t + Σ_h Σ_{j≤t} α^{b,h}_{t,j} v^{b,h}_j W_O^{b,h} + b_O^b + mlp^b_t

(a block that normalises its attention output before adding it, Gemma 2/3's ``ln1_post``,
multiplies every attention part by that norm's per-position factor ``w / rms_t``, read from the
same forward pass, so the parts stay linear and still sum exactly). A part ``z`` of the sum
``x`` gets the proximity ``max(‖x‖₁ − ‖z − x‖₁, 0)``, normalised over all parts of ``x``: its
*importance*. Walking back from the target node and keeping the edges whose importance exceeds
``τ`` gives the route graph. Two granularities, each normalised over its own set of parts:
``by_head=True`` (default) has one part per head and source, ``by_head=False`` one per source
with the heads summed, ``Σ_h α^{b,h}_{t,j} v^{b,h}_j W_O^{b,h}`` (the paper's token edges).

Nodes are ``(layer, position)`` with ``layer`` numbered like :func:`capture_residuals`: layer 0 is
the embedding, layer ``ℓ`` the residual after ``ℓ`` blocks. Block ``b`` joins layer ``b`` to
layer ``b + 1``; an edge of head ``h`` runs ``(b, j) → (b + 1, t)``, the residual and MLP edges
``(b, t) → (b + 1, t)``. Unlike Ferrando & Voita, attention and MLP of a block are one node
step (no node between them), so parallel blocks (GPT-NeoX) and sequential ones read alike; the
MLP's part then competes with the block's attention parts in the normalisation.

Cost. One forward pass with hooks on the patterns, values, residuals and MLP outputs (no full
cache). The importance of the parts of one node costs ``H · (t+1) · d_model`` multiply-adds (the
L1 distance of every part to the sum); it is taken in chunks of source positions (and of query
positions), never materialising ``[head, query, key, d_model]``. ``all_positions=True`` does this
for every node: ``O(L · H · n² · d_model)`` time, and the importances of both granularities take
about half the memory of the attention patterns the result keeps anyway. Otherwise only the
target's nodes are computed up front and the others when a walk first reaches them (memoised).
The patterns are kept as packed lower triangles (:mod:`._causal`): ``L·H·n(n+1)/2`` floats,
9.1 GB for SmolLM2 at 4,096 tokens instead of 18.1 GB dense. See ``benchmarks/routes.py`` and
``benchmarks/long_context.py``.
"""

import html
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from .. import _tl, _validate
from .._display import frame_html
from ..errors import UnsupportedModelError
from ._causal import CausalPatterns, check_dense_fits
from ._route_capture import capture_routes
from ._route_graph import KEY_CHUNK, Block, check_tau, node_importances, route_figure

__all__ = ["FlowRoutes", "information_flow", "check_tau"]

#: Elements of one ``[head, query, key, d_model]`` chunk of parts (float32: 16 MiB).
_CHUNK_ELEMENTS = 1 << 22
#: Nodes whose importances are computed together (their ``[head, node, key]`` buffers).
_NODE_BATCH = 256
#: The paper's default edge threshold.
DEFAULT_TAU = 0.04


@dataclass(frozen=True)
class FlowRoutes:
    """The residual stream of one prompt decomposed into contributions, and its route graph.

    Attributes:
        tokens: the ``[pos]`` token ids; ``labels`` their text.
        target: absolute target position (the walk starts at node ``(n_layers, target)``).
        resid: ``[n_layers + 1, pos, d_model]`` residual after ``ℓ`` blocks (0 = embedding).
        causal_patterns: the post-softmax attention, kept as packed lower triangles (half
            the memory of a dense tensor); :attr:`patterns` gives the dense ``[layer, head,
            query, key]`` tensor, :meth:`layer_patterns` one layer of it.
        values: ``[layer, pos, kv_head, d_head]`` value vectors (grouped K/V heads not expanded).
        w_o: ``[layer, head, d_head, d_model]`` output projections; ``b_o`` ``[layer, d_model]``
            attention output biases (None when the model has none).
        mlp_out: ``[layer, pos, d_model]`` what each block's MLP adds.
        norm_weight, norm_inv_scale: the post-attention norm (Gemma 2/3), as ``[layer,
            d_model]`` elementwise weight and ``[layer, pos]`` per-position ``1/rms``; None when
            the blocks add their attention output directly.
        identity_error: ``[layer, pos]`` ``‖Σ parts − x‖₂ / ‖x‖₂`` of the residual after block
            ``ℓ`` (row ``ℓ−1``) against ``hook_resid_post``, the parts summed per head.
        all_positions: whether every node's importances were computed up front.
    """

    tokens: Int[Tensor, " pos"]
    target: int
    resid: Float[Tensor, "resid_layer pos d_model"]
    causal_patterns: CausalPatterns
    values: Float[Tensor, "layer pos kv_head d_head"]
    w_o: Float[Tensor, "layer head_index d_head d_model"]
    b_o: Float[Tensor, "layer d_model"] | None
    mlp_out: Float[Tensor, "layer pos d_model"]
    norm_weight: Float[Tensor, "layer d_model"] | None
    norm_inv_scale: Float[Tensor, "layer pos"] | None
    identity_error: Float[Tensor, "layer pos"]
    labels: tuple[str, ...] = ()
    model_name: str = ""
    all_positions: bool = False
    chunk_elements: int = _CHUNK_ELEMENTS
    # memoised node importances and the dense patterns; never shared with a copy made by
    # dataclasses.replace (init=False), so a replaced field cannot serve stale results
    _memo: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    # ----------------------------------------------------------------- shape facts
    @property
    def n_layers(self) -> int:
        return self.causal_patterns.shape[0]

    @property
    def n_heads(self) -> int:
        return self.causal_patterns.shape[1]

    @property
    def patterns(self) -> Float[Tensor, "layer head_index query_pos key_pos"]:
        """The dense ``[layer, head, query, key]`` post-softmax attention of this forward pass,
        built from :attr:`causal_patterns` on first access and kept (``L·H·n²`` floats: 18 GiB
        on SmolLM2 at 4,096 tokens, refused with a clear error when the machine has less
        available; :meth:`layer_patterns` reads one layer, :meth:`drop_dense_patterns` frees
        it)."""
        if "dense" not in self._memo:
            check_dense_fits(self.causal_patterns, "FlowRoutes.patterns")
            self._memo["dense"] = self.causal_patterns.dense()
        return self._memo["dense"]

    def layer_patterns(self, layer: int) -> Float[Tensor, "head_index query_pos key_pos"]:
        """The dense ``[head, query, key]`` attention of block ``layer`` (0-based; negative
        counts from the end), without materialising the other layers; a new tensor each call."""
        n = self.n_layers
        b = _validate.integer(layer, "layer", minimum=-n, maximum=n - 1) % n
        if "dense" in self._memo:  # a copy: writing to it never changes `patterns`
            return self._memo["dense"][b].clone()
        return self.causal_patterns.layer(b)

    def drop_dense_patterns(self) -> None:
        """Free the dense tensor :attr:`patterns` built (it is rebuilt on the next access)."""
        self._memo.pop("dense", None)

    @property
    def n_pos(self) -> int:
        return self.tokens.shape[0]

    def _layer(self, layer: int) -> int:
        """A residual layer ``0..n_layers`` (negative counts from the end: -1 = the last)."""
        n = self.n_layers
        return _validate.integer(layer, "layer", minimum=-n - 1, maximum=n) % (n + 1)

    def _position(self, position: int) -> int:
        return _validate.resolve_index(position, self.n_pos, name="position")

    # ----------------------------------------------------------------- parts
    def part_labels(self, layer: int, position: int, *, by_head: bool = True) -> list[str]:
        """Names of the parts of node ``(layer, position)`` in the order of :meth:`parts`."""
        layer, p = self._layer(layer), self._position(position)
        if layer == 0:
            return ["embedding"]
        b = layer - 1
        if _validate.flag(by_head, "by_head"):
            attn = [f"L{b}H{h} ← {j}" for h in range(self.n_heads) for j in range(p + 1)]
        else:
            attn = [f"L{b} attn ← {j}" for j in range(p + 1)]
        bias = [f"L{b} attn bias"] if self.b_o is not None else []
        return ["residual", *attn, *bias, f"L{b} mlp"]

    def parts(
        self, layer: int, position: int, *, by_head: bool = True
    ) -> tuple[list[str], Float[Tensor, "part d_model"]]:
        """``(labels, vectors)``: the parts whose sum is the residual after ``layer`` blocks at
        ``position`` — ``"residual"`` (after ``layer − 1`` blocks), ``"L{b}H{h} ← {j}"`` for
        every head and source ``j ≤ position`` (``b = layer − 1``, head-major; with
        ``by_head=False`` ``"L{b} attn ← {j}"``, the heads summed), ``"L{b} attn bias"`` (when
        the model has ``b_O``) and ``"L{b} mlp"``. ``layer = 0`` gives the single part
        ``"embedding"``. Materialises ``head · (position + 1)`` vectors of ``d_model``."""
        labels = self.part_labels(layer, position, by_head=by_head)
        layer, p = self._layer(layer), self._position(position)
        if layer == 0:
            return labels, self.resid[0, p][None].clone()
        b = layer - 1
        attn = self._head_parts(b, p, 0, p + 1)
        attn = attn.reshape(-1, attn.shape[-1]) if by_head else attn.sum(0)
        rows = [self.resid[b, p][None], attn]
        if self.b_o is not None:
            rows.append(self._bias(b, [p]))
        rows.append(self.mlp_out[b, p][None])
        return labels, torch.cat(rows)

    def importance(
        self, layer: int, position: int, *, by_head: bool = True
    ) -> Float[Tensor, " part"]:
        """Importance of every part of node ``(layer, position)``, aligned with :meth:`parts`:
        ``max(‖x‖₁ − ‖z − x‖₁, 0)`` normalised to sum to 1 over the parts (``[1.]`` at layer
        0). Float32 on the CPU (the importances are kept there, whatever the model's device)."""
        by_head = _validate.flag(by_head, "by_head")
        layer, p = self._layer(layer), self._position(position)
        if layer == 0:
            return torch.ones(1)
        node = self._nodes(layer - 1, [p])[p]
        level = node.heads if by_head else node.tokens
        other = level.other if self.b_o is not None else level.other[[0, 2]]
        return torch.cat([other[:1], level.attn.flatten(), other[1:]])

    # ----------------------------------------------------------------- route graph
    def edges(
        self, tau: float = DEFAULT_TAU, *, layer: int = -1, by_head: bool = True
    ) -> pd.DataFrame:
        """The route graph's edges, walking back from node ``(layer, target)`` (default the
        last layer) and keeping parts with importance ``> tau``.

        Columns: ``block`` ``b`` and ``layer`` ``b + 1`` (the edge runs from node ``(b,
        source)`` to node ``(b + 1, target)``; docs/science.md "Conventions"), ``head`` (an int;
        ``"attn"`` for the heads summed when ``by_head=False``; or ``"mlp"`` / ``"residual"``),
        ``source``,
        ``target`` (positions), ``importance`` (of the part within its node), ``norm``
        (``‖z‖₂`` of the part) and ``flow`` (the product of importances from the start node
        down to this edge, summed over kept paths: how much of the start node the edge
        carries). Attention biases have no source node and are never edges (they still count
        in the normalisation). Sorted by layer (top first), then importance.
        """
        rows = [e for block in self._walk(tau, layer, by_head) for e in block.rows()]
        columns = ["block", "head", "source", "target", "importance", "norm", "flow"]
        frame = pd.DataFrame(rows, columns=columns)
        frame.insert(1, "layer", frame["block"] + 1)
        frame = frame.sort_values(["block", "importance"], ascending=[False, False])
        return frame.reset_index(drop=True)

    def to_dataframe(
        self, tau: float = DEFAULT_TAU, *, layer: int = -1, by_head: bool = True
    ) -> pd.DataFrame:
        """The route graph's edges (:meth:`edges`)."""
        return self.edges(tau, layer=layer, by_head=by_head)

    def graph(self, tau: float = DEFAULT_TAU, *, layer: int = -1, by_head: bool = True) -> Any:
        """The route graph as a ``networkx.DiGraph`` on nodes ``(layer, position)`` (attributes
        ``token`` and ``flow``, the total of :meth:`source_totals` reaching the node). Parts
        joining the same two nodes (heads attending to the same source; residual and MLP) are
        one edge with ``importance`` their sum, ``parts`` ``{label: importance}`` (labels
        ``"L{b}H{h}"`` or ``"L{b} attn"``, ``"mlp"``, ``"residual"``) and ``norm`` the sum of
        their norms."""
        import networkx as nx

        graph = nx.DiGraph()
        start = self._layer(layer)
        graph.add_node((start, self.target), token=self._label(self.target), flow=1.0)
        for block in self._walk(tau, layer, by_head):
            for b, head, j, t, imp, norm, flow in block.rows():
                u, v = (b, j), (b + 1, t)
                for node in (u, v):
                    if node not in graph:
                        graph.add_node(node, token=self._label(node[1]), flow=0.0)
                graph.nodes[u]["flow"] += flow
                name = f"L{b}H{head}" if isinstance(head, int) else head
                name = f"L{b} attn" if name == "attn" else name
                if graph.has_edge(u, v):
                    data = graph.edges[u, v]
                    data["importance"] += imp
                    data["norm"] += norm
                    data["parts"][name] = imp
                else:
                    graph.add_edge(u, v, importance=imp, norm=norm, parts={name: imp})
        return graph

    def source_totals(
        self, tau: float = DEFAULT_TAU, *, layer: int = -1, by_head: bool = True
    ) -> Float[Tensor, " pos"]:
        """Per source token, the sum over kept paths (embedding ``(0, j)`` → … → ``(layer,
        target)``) of the product of the edge importances along the path: an attention rollout
        whose weights are the routes' importances, restricted to the route graph. At ``tau=0``
        the totals sum to 1 minus the importance mass of attention biases; a larger ``tau``
        drops paths, so the totals shrink. Float64, ``[pos]``."""
        flow = torch.zeros(self.n_pos, dtype=torch.float64)
        for block in self._walk(tau, layer, by_head):
            if block.b == 0:
                flow = block.sources
        if self._layer(layer) == 0:
            flow[self.target] = 1.0
        return flow

    # ----------------------------------------------------------------- display
    def _label(self, p: int) -> str:
        return self.labels[p] if self.labels else str(int(self.tokens[p]))

    def _repr_html_(self) -> str:
        err = float(self.identity_error.max()) if self.identity_error.numel() else 0.0
        head = (
            f"<b>FlowRoutes</b> {html.escape(self.model_name)}: target {self.target} "
            f"({html.escape(repr(self._label(self.target)))}), {self.n_pos} tokens, "
            f"{self.n_layers} layers; parts sum to the residual to {err:.1e} (relative)"
        )
        edges = self.edges()
        top = edges.sort_values("flow", ascending=False).head(15)
        totals = self.source_totals()
        frame = pd.DataFrame(
            {"token": [self._label(p) for p in range(self.n_pos)], "source_total": totals.numpy()}
        )
        return frame_html(f"{head}<br>Top edges (τ={DEFAULT_TAU}) by flow", top) + frame_html(
            f"Per-source totals (τ={DEFAULT_TAU})", frame
        )

    def plot(self, tau: float = DEFAULT_TAU, *, layer: int = -1, by_head: bool = True):
        """The route graph with plotly: positions on x (token labels), layers on y, edge width
        proportional to importance; attention edges blue, MLP orange, residual grey. A plotly
        figure: ``oversquash_lens.viz.save_html`` writes it with plotly.js inlined (offline)."""
        graph = self.graph(tau, layer=layer, by_head=by_head)
        return route_figure(self, graph, tau)

    # ----------------------------------------------------------------- internals
    def _inv_scale(self, b: int, positions: list[int]) -> Tensor:
        if self.norm_inv_scale is None:
            return torch.ones(len(positions), dtype=self.resid.dtype, device=self.resid.device)
        return self.norm_inv_scale[b, positions]

    def _bias(self, b: int, positions: list[int]) -> Tensor:
        """``[q, d_model]`` the attention bias as added at each position (zeros when none)."""
        if self.b_o is None:
            return torch.zeros(len(positions), self.resid.shape[-1], device=self.resid.device)
        bias = self.b_o[b] if self.norm_weight is None else self.b_o[b] * self.norm_weight[b]
        return bias[None] * self._inv_scale(b, positions)[:, None]

    def _value_out(self, b: int, k0: int, k1: int) -> Tensor:
        """``[head, key, d_model]`` ``v_j W_O^h`` (times the post-norm weight) for keys
        ``k0..k1-1``."""
        v = self.values[b, k0:k1]
        v = v.repeat_interleave(self.n_heads // v.shape[1], dim=1)  # grouped K/V heads
        out = torch.einsum("khd,hdm->hkm", v, self.w_o[b])
        return out if self.norm_weight is None else out * self.norm_weight[b]

    def _head_parts(self, b: int, p: int, k0: int, k1: int) -> Tensor:
        """``[head, key, d_model]`` parts of node ``(b + 1, p)`` from sources ``k0..k1-1``."""
        pattern = self.causal_patterns
        alpha = pattern._rows(b, torch.tensor([p], device=pattern.device), k0, k1)[:, 0]
        alpha = alpha * self._inv_scale(b, [p])
        return alpha[..., None] * self._value_out(b, k0, k1)

    def _value_norms(self, b: int) -> Tensor:
        """``[head, key]`` ``‖v_j W_O^h‖₂`` (memoised per block)."""
        key = ("vnorm", b)
        if key not in self._memo:
            norms = [
                self._value_out(b, k0, min(self.n_pos, k0 + KEY_CHUNK)).norm(dim=-1)
                for k0 in range(0, self.n_pos, KEY_CHUNK)
            ]
            self._memo[key] = torch.cat(norms, dim=1)
        return self._memo[key]

    def _nodes(self, b: int, positions: list[int]) -> dict[int, Any]:
        """Importances of nodes ``(b + 1, p)``, computing (and memoising) the missing ones."""
        missing = sorted({p for p in positions if (b, p) not in self._memo})
        for i in range(0, len(missing), _NODE_BATCH):  # bounded [head, batch, key] buffers
            for p, node in node_importances(self, b, missing[i : i + _NODE_BATCH]):
                self._memo[(b, p)] = node
        return {p: self._memo[(b, p)] for p in positions}

    def _walk(self, tau: float, layer: int, by_head: bool) -> Iterator[Block]:
        """The kept edges block by block from ``(layer, target)`` down to the embedding."""
        tau = check_tau(tau)
        by_head = _validate.flag(by_head, "by_head")
        start = self._layer(layer)
        weight = torch.zeros(self.n_pos, dtype=torch.float64)  # the walk runs on the CPU
        weight[self.target] = 1.0
        for b in reversed(range(start)):
            reached = weight.nonzero().flatten().tolist()
            nodes = self._nodes(b, reached)
            levels = {t: node.heads if by_head else node.tokens for t, node in nodes.items()}
            block = Block(self, b, tau, weight, levels, by_head)
            weight = block.sources
            yield block
            if not reached:
                break


# --------------------------------------------------------------------------- entry point
def information_flow(
    model: Any,
    tokens: Any,
    *,
    target: int = -1,
    all_positions: bool = False,
    chunk_elements: int | None = None,
) -> FlowRoutes:
    """Decompose the residual stream into per-head, per-source contributions and build the
    information flow routes toward ``target`` (Ferrando & Voita 2024; docs/science.md
    §"Contribution routes and attention flow").

    Example:
        >>> routes = information_flow(model, "What is the last digit? 3 8 1 9 . Answer:")
        >>> labels, vectors = routes.parts(3, -1)  # vectors.sum(0) == residual after 3 blocks
        >>> routes.edges(tau=0.04).head()          # the route graph's strongest edges
        >>> routes.source_totals()                 # [pos] how much of the target each token is

    Args:
        model: a TransformerBridge or HookedTransformer (left unchanged; hooks removed).
        tokens: one sequence (text, ``[pos]`` or ``[1, pos]``).
        target: the position the routes lead to (negative counts from the end).
        all_positions: compute every node's importances now (``O(L·H·n²·d_model)``); otherwise
            the target's nodes now and other nodes when a walk first reaches them.
        chunk_elements: elements per ``[head, query, key, d_model]`` chunk (default 2**22).

    Returns:
        :class:`FlowRoutes`: its tensors float32 on the model's device; importances, totals
        and the walk on the CPU.

    Raises:
        UnsupportedModelError: no attention hooks (e.g. Mamba), or blocks whose output is not
            ``residual + attention + MLP`` (checked: the parts must sum to ``hook_resid_post``).
        InvalidTokensError, InvalidArgumentError: bad tokens, target or options.
    """
    info = _tl.require_attention(model)
    toks = _tl.single_sequence(model, tokens, info)
    n = toks.shape[1]
    t = _validate.resolve_index(target, n, name="target")
    all_positions = _validate.flag(all_positions, "all_positions")
    chunk = _CHUNK_ELEMENTS
    if chunk_elements is not None:
        chunk = _validate.integer(chunk_elements, "chunk_elements", minimum=1)
    routes = FlowRoutes(
        tokens=toks[0].cpu(),
        target=t,
        **capture_routes(model, toks, info),
        identity_error=torch.zeros(info.n_layers, n),
        labels=_labels(model, toks[0]),
        model_name=info.name,
        all_positions=all_positions,
        chunk_elements=chunk,
    )
    err = _identity_error(routes)
    routes.identity_error.copy_(err)
    tol = max(1e-3, 16 * torch.finfo(_tl.model_dtype(model)).eps)
    if float(err.max()) > tol:
        block, pos = divmod(int(err.argmax()), n)
        raise UnsupportedModelError(
            f"model {info.name!r}: the residual after block {block} at position {pos} is not "
            f"residual + attention + MLP (relative error {float(err.max()):.2g} > {tol:.1g}); "
            "its blocks add something these parts do not cover"
        )
    for b in range(info.n_layers):  # the target's nodes now; every node when asked
        routes._nodes(b, list(range(n)) if all_positions else [t])
    return routes


def _labels(model: Any, ids: Tensor) -> tuple[str, ...]:
    tokenizer = _tl.text_tokenizer(model)
    if tokenizer is None:
        return tuple(str(i) for i in ids.tolist())
    return tuple(tokenizer.decode([i]) for i in ids.tolist())


def _identity_error(r: FlowRoutes) -> Tensor:
    """``[layer, pos]`` relative L2 error of residual + Σ_h (α v W_O)_h + bias + MLP against
    the captured residual after each block (parts summed per head, not one by one)."""
    rows = []
    for b in range(r.n_layers):
        v = r.values[b].repeat_interleave(r.n_heads // r.values.shape[2], dim=1)
        z = torch.einsum("hqk,khd->qhd", r.causal_patterns.layer(b), v)
        attn = torch.einsum("qhd,hdm->qm", z, r.w_o[b])
        if r.b_o is not None:
            attn = attn + r.b_o[b]
        if r.norm_weight is not None:
            attn = attn * r.norm_weight[b] * r.norm_inv_scale[b][:, None]  # type: ignore[index]
        x = r.resid[b + 1]
        diff = (r.resid[b] + attn + r.mlp_out[b] - x).norm(dim=-1)
        rows.append(diff / x.norm(dim=-1).clamp_min(torch.finfo(x.dtype).tiny))
    return torch.stack(rows)
