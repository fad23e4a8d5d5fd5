"""Prompt builders: exact token-level structure, ground-truth answers, registry and errors."""

from types import SimpleNamespace

import pytest
import torch

from oversquash_lens import OversquashError, tasks, testing


@pytest.fixture(scope="module")
def bpe():
    """A stand-in model whose BPE tokenizer merges across spaces ('1 1 1 1 1' is one token)."""
    from tokenizers import Tokenizer, models, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    trainer = trainers.BpeTrainer(vocab_size=60, special_tokens=["<bos>", "<unk>"])
    tok.train_from_iterator(
        ["1 1 1 1 1 1 1 1 0 1 0, 1 1 1, Count the ones: 1 1. Answer:"] * 50, trainer
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", unk_token="<unk>")
    return SimpleNamespace(tokenizer=fast, cfg=SimpleNamespace(default_prepend_bos=True))


def _ids(model, text):
    return model.tokenizer.encode(text, add_special_tokens=False)


def test_repeated_pair_word_level_equals_to_tokens(llama):
    for n in (1, 2, 9):
        pair = tasks.repeated_pair(llama, n)
        text = " ".join(["1"] * n)
        assert pair.base.tolist() == llama.to_tokens(text)[0].tolist()
        assert pair.extended.tolist() == llama.to_tokens(text + " 1")[0].tolist()
        assert (pair.length, pair.task) == (n, "repeat")


def test_repeated_pair_bpe_differs_by_exactly_one_item(bpe):
    unit = _ids(bpe, " 1")
    assert len(_ids(bpe, "1 1 1 1 1 1")) < 6  # re-tokenizing the string would merge items
    bos = bpe.tokenizer.bos_token_id
    for n in (1, 5, 12):
        pair = tasks.repeated_pair(bpe, n)
        assert pair.base.tolist() == [bos] + unit * n
        assert pair.extended.tolist() == pair.base.tolist() + unit
    sep = tasks.repeated_pair(bpe, 6, sep=",", every=3, prefix="Count the ones:")
    comma = _ids(bpe, ",")
    expected = [bos] + _ids(bpe, "Count the ones:") + unit * 3 + comma + unit * 3
    assert sep.base.tolist() == expected
    assert sep.extended.tolist() == expected + comma + unit  # separator due after item 6
    nobos = tasks.repeated_pair(bpe, 2, bos=None)
    assert nobos.base.tolist() == unit * 2


def test_separators_every_k_and_interleave(llama):
    comma, one, filler = (llama.tokenizer.convert_tokens_to_ids(t) for t in (",", "1", "and"))
    for n, every in [(7, 3), (9, 3), (5, 2), (4, 1)]:
        pair = tasks.task_pair(llama, "repeat-sep", n, every=every)
        body = pair.base.tolist()[1:]
        assert body.count(comma) == (n - 1) // every
        assert body.count(one) == n
        assert body[-1] == one and pair.extended.tolist()[-1] == one
    inter = tasks.task_pair(llama, "repeat-interleave", 3)
    assert inter.base.tolist()[1:] == [one, filler, one, filler, one]


def test_alternating_and_copy_pairs(llama):
    zero, one = (llama.tokenizer.convert_tokens_to_ids(t) for t in ("0", "1"))
    alt = tasks.task_pair(llama, "alternating", 5)
    assert alt.base.tolist()[1:] == [one, zero, one, zero, one]
    assert alt.extended.tolist()[1:] == [zero, one, zero, one, zero]
    last = tasks.task_pair(llama, "copy-last", 4)
    assert last.base.tolist()[1:] == [one, one, one, zero]
    assert last.extended.tolist()[1:] == [one, one, one, zero, zero]
    first = tasks.task_pair(llama, "copy-first", 4)
    assert first.base.tolist()[1:] == [zero, one, one, one]
    assert first.extended.tolist()[1:] == [one, one, one, one]


def test_raw_ids_without_tokenizer():
    pair = tasks.repeated_pair(None, 3, item=7, bos=0, prefix=[9, 9])
    assert pair.base.tolist() == [0, 9, 9, 7, 7, 7]
    assert pair.extended.tolist() == [0, 9, 9, 7, 7, 7, 7]
    d = testing.TINY_SYMBOLS
    sym = tasks.repeated_pair(None, 2, sep=",", every=1, symbols=d)  # no BOS
    with pytest.raises(OversquashError, match="no tokenizer"):  # no ids are ever assumed
        tasks.repeated_pair(None, 2)
    assert sym.base.tolist() == [d["1"], d[","], d["1"]]
    multi = tasks.repeated_pair(None, 2, item=[3, 4])
    assert multi.extended.tolist() == [3, 4, 3, 4, 3, 4]
    counting = tasks.task_pair(None, "count-ones", 2, symbols=d)  # template text is dropped
    assert counting.base.tolist() == [d["1"]] * 2
    with pytest.raises(OversquashError, match="no tokenizer"):
        tasks.repeated_pair(None, 2, item="x")


def test_counting_prompts_answers(llama):
    tok = llama.tokenizer
    one, zero, comma = (tok.convert_tokens_to_ids(t) for t in ("1", "0", ","))
    p = tasks.task_prompt(llama, "count-ones", 7)
    assert p.answer == "7" and p.tokens.tolist().count(one) == 7
    sep = tasks.task_prompt(llama, "count-ones", 7, remedy="separators")
    assert sep.tokens.tolist().count(comma) == 2 and sep.answer == "7"
    for seed in range(5):
        b = tasks.task_prompt(llama, "count-bernoulli", 20, seed=seed, p=0.7)
        ids = b.tokens.tolist()
        assert ids.count(one) + ids.count(zero) == 20
        assert b.answer == str(ids.count(one))
    assert tasks.task_prompt(llama, "count-bernoulli", 20, seed=1).tokens.tolist() != ids
    assert torch.equal(tasks.task_prompt(llama, "count-bernoulli", 20, seed=4).tokens, b.tokens)
    w = tasks.task_prompt(llama, "count-word", 30, seed=3, word="cat")
    cat = tok.convert_tokens_to_ids("cat")
    assert w.answer == str(w.tokens.tolist().count(cat) - 1)  # minus the one in the question
    s = tasks.task_prompt(llama, "sum-ones", 4)
    assert s.answer == "4" and s.tokens.tolist().count(one) == 4
    hint = tasks.task_prompt(llama, "count-ones", 3, remedy="hint", hint="what is")
    assert hint.tokens.tolist()[1:3] == [tok.convert_tokens_to_ids(w) for w in ("what", "is")]


def test_copying_prompts(llama):
    zero = llama.tokenizer.convert_tokens_to_ids("0")
    last = tasks.task_prompt(llama, "copy-last", 6)
    assert last.answer == "0" and last.tokens.tolist().count(zero) == 1
    rep = tasks.task_prompt(llama, "copy-last", 6, remedy="repeat-final", repeat=3)
    assert rep.tokens.tolist().count(zero) == 4 and rep.answer == "0"
    first = tasks.task_prompt(llama, "copy-first", 6, other="3")
    assert first.answer == "3"
    assert "repeat-final" in tasks.applicable_remedies("copy-last")
    assert "repeat-final" not in tasks.applicable_remedies("count-ones")
    assert "interleave" not in tasks.applicable_remedies("sum-ones")
    assert "separators" not in tasks.applicable_remedies("sum-ones")
    with pytest.raises(OversquashError, match="'separators'"):
        tasks.task_prompt(llama, "sum-ones", 6, remedy="separators")


def test_registry_and_errors(llama):
    assert {"repeat", "repeat-sep", "alternating", "copy-last", "count-ones"} <= set(
        tasks.pair_tasks()
    )
    assert {"count-ones", "count-bernoulli", "copy-last"} <= set(tasks.prompt_tasks())
    with pytest.raises(OversquashError, match=r"task='nope' is not one of \['repeat'"):
        tasks.task_pair(llama, "nope", 3)
    with pytest.raises(OversquashError, match="'nope'"):
        tasks.task_prompt(llama, "nope", 3)
    with pytest.raises(OversquashError, match="n=0"):
        tasks.repeated_pair(llama, 0)
    with pytest.raises(OversquashError, match="n=1"):
        tasks.alternating_pair(llama, 1)
    with pytest.raises(OversquashError, match="remedy='glasses'"):
        tasks.task_prompt(llama, "count-ones", 3, remedy="glasses")
    with pytest.raises(OversquashError, match="repeat-final"):
        tasks.task_prompt(llama, "count-ones", 3, remedy="repeat-final")
    with pytest.raises(OversquashError, match="template="):
        tasks.task_prompt(llama, "count-ones", 3, template="no placeholder")
    with pytest.raises(OversquashError, match="every=0"):
        tasks.repeated_pair(llama, 3, sep=",", every=0)
    with pytest.raises(OversquashError, match="which='middle'"):
        tasks.copy_pair(llama, 3, which="middle")
    with pytest.raises(OversquashError, match="p=1.5"):
        tasks.task_prompt(llama, "count-bernoulli", 3, p=1.5)
    with pytest.raises(OversquashError, match="bos='yes'"):
        tasks.repeated_pair(llama, 3, bos="yes")
