import plotly.express as px
import pytest
import torch

from oversquash_lens import OversquashError, viz
from oversquash_lens.views import circuits

from .browser import render


def test_one_bundle_per_file(tmp_path):
    views = [
        viz.colored_tokens(["a", "b"], [0.1, 0.2], title="one"),
        viz.colored_tokens_multi(["a", "b"], {"x": [0.1, 0.5], "y": torch.tensor([1.0, 2.0])}),
        viz.attention_heads(torch.eye(2).expand(3, 2, 2), ["a", "b"]),
        px.line(x=[1, 2], y=[3, 4]),
        px.line(x=[1, 2], y=[4, 3]),
    ]
    text = viz.save_html(views, tmp_path / "v.html").read_text()
    assert text.count("CircuitsVis.render(") == 3
    assert text.count(circuits._bundle()[:200]) == 1
    assert text.count("plotly.js v") <= 2  # one inlined library (its banner may repeat once)
    assert "https://unpkg.com" not in text and "cdn.plot.ly" not in text.split("<body>")[1]
    # Jupyter display is self-contained too (bundle inlined, no CDN import).
    assert "unpkg.com" not in views[0]._repr_html_()


def test_long_attention_is_truncated():
    attn = torch.rand(2, 2000, 2000).tril()
    view = viz.attention_heads(attn, [str(i) for i in range(2000)], title="long")
    assert "last 256 tokens" in view.title
    assert view.body().count('"1999"') >= 1 and '"1743"' not in view.body()


def test_bad_view_inputs():
    with pytest.raises(OversquashError, match="3 tokens but 2 values"):
        viz.colored_tokens(["a", "b", "c"], [1, 2])
    with pytest.raises(OversquashError, match="measures"):
        viz.colored_tokens_multi(["a"], {})
    with pytest.raises(OversquashError, match=r"\(2, 3\)"):
        viz.attention_heads(torch.rand(2, 3), ["a", "b"])
    with pytest.raises(OversquashError, match="object"):
        viz.save_html(object(), "x.html")


@pytest.mark.browser
def test_views_render_offline(tmp_path):
    n = 2000
    toks = [f"t{i}" for i in range(n)]
    views = [
        "<h1>views</h1>",
        viz.colored_tokens_multi(toks, {"a": torch.rand(n), "b": torch.rand(n)}, title="multi"),
        viz.attention_heads(torch.softmax(torch.randn(2, n, n), -1).tril(), toks, title="attn"),
        px.line(x=list(range(n)), y=torch.rand(n).tolist(), title="plot"),
    ]
    path = viz.save_html(views, tmp_path / "views.html")
    errors, external, text, _ = render(path, tmp_path / "views.png")
    assert errors == [] and external == []
    assert "Head Selector" in text and "t1999" in text
