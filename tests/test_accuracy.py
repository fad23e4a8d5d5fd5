"""task_accuracy: greedy answers equal an independent decoding loop; remedies; errors."""

import pytest
import torch

from oversquash_lens import AccuracyReport, OversquashError, _tl, task_accuracy, tasks, testing
from oversquash_lens.tasks.accuracy import read_answer

from .conftest import assert_unchanged, state_snapshot


def _reference_answer(model, prompt, steps):
    """Greedy decoding one prompt at a time with plain forward passes."""
    toks = prompt.tokens[None]
    for _ in range(steps):
        with torch.no_grad():
            nxt = model(toks)[0, -1].argmax()
        toks = torch.cat([toks, nxt.view(1, 1)], dim=1)
    return model.tokenizer.decode(toks[0, len(prompt.tokens) :].tolist())


def test_predictions_equal_reference_decoding(llama):
    _tl.run_with_hooks(llama, torch.tensor([[0, 1]]), [])
    snap = state_snapshot(llama)
    rep = task_accuracy(llama, "count-ones", [3, 11], remedies=("none", "separators"))
    assert_unchanged(llama, snap)
    rows = rep.to_dataframe(per_prompt=True)
    assert len(rows) == 4  # deterministic task: one prompt per (remedy, length)
    for row in rows.itertuples():
        prompt = tasks.task_prompt(llama, "count-ones", row.length, remedy=row.remedy)
        k = len(llama.tokenizer.encode(" " + prompt.answer, add_special_tokens=False)) + 1
        text = _reference_answer(llama, prompt, k)
        assert row.output == text
        assert row.prediction == read_answer(text)
        assert row.correct == (row.prediction == str(row.length))
    agg = rep.to_dataframe()
    assert set(agg.columns) >= {"task", "remedy", "length", "accuracy", "n_prompts"}
    assert agg["accuracy"].between(0, 1).all()


def test_random_tasks_samples_skips_and_glasses(llama):
    rep = task_accuracy(llama, "count-bernoulli", [4, 9], n_samples=3, remedies=tasks.REMEDIES)
    assert rep.skipped == ("repeat-final",)
    assert set(rep.remedies) == {"none", "separators", "hint", "interleave"}
    per = rep.to_dataframe(per_prompt=True)
    assert len(per) == 4 * 2 * 3
    for row in per.itertuples():
        prompt = tasks.task_prompt(llama, "count-bernoulli", row.length, remedy=row.remedy,
                                   seed=row.sample)  # fmt: skip
        assert row.answer == prompt.answer
    assert rep.accuracy("hint").index.tolist() == [4, 9]
    copy = task_accuracy(llama, "copy-last", [5], remedies=("repeat-final",))
    assert copy.remedies == ("repeat-final",) and copy.skipped == ()
    snap = state_snapshot(llama)
    glassy = task_accuracy(llama, "copy-last", [5], adaptive_temperature=True)
    assert_unchanged(llama, snap)
    assert glassy.intervention == "adaptive_temperature"
    assert "AccuracyReport" in glassy._repr_html_()
    fig = rep.plot()
    assert len(fig.data) == 4


def test_read_answer():
    assert read_answer(" 12.") == "12"
    assert read_answer("\n7 ones") == "7"
    assert read_answer(" zero ") == "zero"
    assert read_answer("-3") == "-3"


def test_errors(llama):
    with pytest.raises(OversquashError, match=r"n=200 .* n_ctx=128"):
        task_accuracy(llama, "count-ones", [200])
    with pytest.raises(OversquashError, match="'nope'"):
        task_accuracy(llama, "nope", [3])
    with pytest.raises(OversquashError, match="glasses"):
        task_accuracy(llama, "count-ones", [3], remedies=("glasses",))
    with pytest.raises(OversquashError, match="empty"):
        task_accuracy(llama, "count-ones", [])
    with pytest.raises(OversquashError, match="n=0"):
        task_accuracy(llama, "count-ones", [0])
    with pytest.raises(OversquashError, match="n_samples=0"):
        task_accuracy(llama, "count-ones", [3], n_samples=0)
    with pytest.raises(OversquashError, match="either"):
        task_accuracy(llama, "count-ones", [3], adaptive_temperature=True, intervention=[])
    with pytest.raises(OversquashError, match="no tokenizer"):
        task_accuracy(testing.tiny_native_model(), "count-ones", [3])
    with pytest.raises(OversquashError, match=r"\['repeat-final'\]: none applies .*'count-ones'"):
        task_accuracy(llama, "count-ones", [3], remedies=["repeat-final"])
    with pytest.raises(OversquashError, match="remedy='x' was not measured"):
        AccuracyReport(
            task_accuracy(llama, "count-ones", [3], remedies=("none",)).records,
            "count-ones", (3,), ("none",),
        ).accuracy("x")  # fmt: skip


def test_interrupted_sweep_keeps_the_prompts_answered(llama, monkeypatch):
    """A KeyboardInterrupt after some batches returns their records (complete=False) with a
    SweepInterrupted warning; an interrupt before the first batch propagates."""
    from oversquash_lens import _sweep
    from oversquash_lens.tasks import accuracy

    full = task_accuracy(llama, "copy-last", [3, 5, 8], remedies=("none",), batch_size=4)
    real, calls = accuracy._greedy, []

    def stop_after(k):
        def greedy(*args, **kwargs):
            calls.append(1)
            if len(calls) > k:
                raise KeyboardInterrupt
            return real(*args, **kwargs)

        return greedy

    monkeypatch.setattr(accuracy, "_greedy", stop_after(2))
    with pytest.warns(_sweep.SweepInterrupted, match="2 of"):
        part = task_accuracy(llama, "copy-last", [3, 5, 8], remedies=("none",), batch_size=4)
    assert part.complete is False and full.complete is True
    got = part.to_dataframe(per_prompt=True)
    assert 0 < len(got) < len(full.to_dataframe(per_prompt=True))
    ref = full.to_dataframe(per_prompt=True).set_index(["remedy", "length", "sample"])
    for _, row in got.iterrows():  # every kept record is the full run's record
        assert ref.loc[(row.remedy, row.length, row["sample"]), "prediction"] == row.prediction
    assert "interrupted" in part._repr_html_()
    calls.clear()
    monkeypatch.setattr(accuracy, "_greedy", stop_after(0))
    with pytest.raises(KeyboardInterrupt):
        task_accuracy(llama, "copy-last", [3], remedies=("none",))
