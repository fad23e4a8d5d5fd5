"""oversquash_profile: each column equals the standalone measure; correlations are Spearman."""

import math

import pandas as pd
import pytest
import torch

from oversquash_lens import (
    InvalidArgumentError,
    OversquashError,
    OversquashProfile,
    _tl,
    attention_rollout_from_model,
    capture_residuals,
    oversquash_profile,
    oversquashing_bound,
    path_counts,
    token_sensitivity,
)

from .conftest import assert_unchanged, state_snapshot, without_runtime_type_checks

TOKENS = torch.tensor([[0, 5, 9, 7, 8, 11, 4, 6, 10]])


def _residual_scale(model, toks):
    """Independent β: the divisor of the pre-attention norm, sqrt(var + ε) (LayerNorm) or
    sqrt(mean square + ε) (RMSNorm) of the residual entering each block."""
    states = capture_residuals(model, toks).states[0, :-1].double()  # [layer, pos, d]
    eps = model.cfg.eps
    if model.cfg.normalization_type.upper().startswith("RMS"):
        return (states.square().mean(-1) + eps).sqrt()
    return (states.var(-1, correction=0) + eps).sqrt()


@pytest.mark.parametrize("target", [-1, 5])
def test_columns_equal_the_standalone_measures(arch_model, target):
    with torch.no_grad():  # TL 4 bridges install their own capture hooks on the first forward
        arch_model(TOKENS)
    snap = state_snapshot(arch_model)
    prof = oversquash_profile(arch_model, TOKENS, target=target, method="exact")
    assert_unchanged(arch_model, snap)
    assert isinstance(prof, OversquashProfile)
    n_layers, t = arch_model.cfg.n_layers, target % 9
    assert prof.layer == n_layers and prof.target == t
    frame = prof.to_dataframe()
    assert list(frame.columns) == [
        "pos",
        "token",
        "log_paths",
        "log_paths_residual",
        "rollout",
        "bound",
        "sensitivity",
    ]
    assert len(frame) == 9
    logs = path_counts(9, n_layers, target=target, log=True)
    assert frame["log_paths"].tolist() == logs.tolist()
    rollout = attention_rollout_from_model(arch_model, TOKENS, target=target)
    torch.testing.assert_close(prof.rollout, rollout)
    sens = token_sensitivity(arch_model, TOKENS, target=target)
    torch.testing.assert_close(prof.sensitivity.values, sens.values)
    beta = _residual_scale(arch_model, TOKENS)
    torch.testing.assert_close(prof.beta, beta, rtol=1e-6, atol=0)
    patterns = _tl.attention_patterns(arch_model, TOKENS)[0]
    torch.testing.assert_close(
        prof.bound, oversquashing_bound(patterns, target=target, beta=beta), rtol=1e-5, atol=0
    )
    torch.testing.assert_close(
        torch.tensor(frame["sensitivity"].to_numpy(), dtype=torch.float32),
        sens.values[-1],
    )


def test_correlations_are_spearman_over_positions_up_to_target(llama):
    prof = oversquash_profile(llama, TOKENS, target=6, method="estimate", n_probes=16)
    measures = ["log_paths", "rollout", "bound", "sensitivity"]  # log_paths_residual: same ranks
    for kwargs, rows in (({}, slice(1, 6)), ({"exclude_bos": False, "exclude_target": False},
                                             slice(0, 7))):  # fmt: skip
        corr = prof.correlations(**kwargs)
        assert list(corr.columns) == measures and list(corr.index) == measures
        frame = prof.to_dataframe().iloc[rows][measures]
        ranks = frame.rank()  # Spearman = Pearson on ranks (average ranks for ties)
        expected = pd.DataFrame(
            [[ranks[a].corr(ranks[b]) for b in measures] for a in measures],
            index=measures,
            columns=measures,
        )
        pd.testing.assert_frame_equal(corr, expected, atol=1e-12, rtol=0)
        assert corr.loc["log_paths", "log_paths"] == pytest.approx(1.0)
    sources = prof.to_dataframe().iloc[: prof.target]  # ties only at the target itself
    assert sources["log_paths"].rank().equals(sources["log_paths_residual"].rank())  # dropped


def test_agreement_has_a_bootstrap_interval(llama):
    prof = oversquash_profile(llama, TOKENS, target=6, method="estimate", n_probes=16)
    table = prof.agreement(n_boot=200)
    assert list(table["predictor"]) == ["log_paths", "rollout", "bound"]
    corr = prof.correlations()
    for row in table.itertuples():
        assert row.spearman == pytest.approx(corr.loc[row.predictor, "sensitivity"])
        assert row.ci_low <= row.spearman + 1e-9 or math.isnan(row.ci_low)
        assert row.positions == 5
    with pytest.raises(OversquashError, match="n_boot=3"):
        prof.agreement(n_boot=3)
    with without_runtime_type_checks(), pytest.raises(OversquashError, match="exclude_bos='no'"):
        prof.correlations(exclude_bos="no")


def test_zero_residual_gets_the_norms_divisor(llama):
    """A padding token's embedding row is 0 in HF Llama: β there is sqrt(ε), not 0 (which the
    bound would reject), exactly what the norm divides by."""
    toks = torch.tensor([[0, 5, 3, 7, 8]])  # id 3 = <pad>: zero embedding
    prof = oversquash_profile(llama, toks, method="estimate", n_probes=4)
    assert prof.beta[0, 2].item() == pytest.approx(llama.cfg.eps**0.5, rel=1e-6)
    assert torch.isfinite(prof.bound).all()


def test_layers_beta_and_views(gpt2):
    prof = oversquash_profile(gpt2, TOKENS, method="exact", beta=1.0, layer=1)
    assert prof.layer == 1
    first = prof.to_dataframe()
    assert first["log_paths"].tolist() == path_counts(9, 1, log=True).tolist()
    torch.testing.assert_close(
        torch.tensor(first["rollout"].to_numpy(), dtype=torch.float32), prof.rollout[0]
    )
    last = prof.to_dataframe(layer=-1)
    assert last["log_paths"].tolist() == path_counts(9, 2, log=True).tolist()
    # beta = 1: the bound is 2^l times the rollout with residual 0.5
    torch.testing.assert_close(
        prof.bound, prof.rollout.double() * torch.tensor([[2.0], [4.0]]), rtol=1e-5, atol=0
    )
    html = prof._repr_html_()
    assert "OversquashProfile" in html and "Spearman" in html
    fig = prof.plot()
    assert len(fig.data) == 5
    with pytest.raises(InvalidArgumentError, match="layer=3"):
        prof.to_dataframe(layer=3)


def test_bad_options(gpt2):
    with pytest.raises(InvalidArgumentError, match="beta='norms'"):
        oversquash_profile(gpt2, TOKENS, beta="norms")
    with pytest.raises(InvalidArgumentError, match="layer=0"):
        oversquash_profile(gpt2, TOKENS, layer=0)
    with pytest.raises(InvalidArgumentError, match="method='fast'"):
        oversquash_profile(gpt2, TOKENS, method="fast")
