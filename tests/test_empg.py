"""EMPG (arXiv 2509.09265) and the reasoning-segment rule it uses (entropo.algorithms.segments)."""

from types import SimpleNamespace

import pytest
import torch

from entropo import registry
from entropo.algorithms import segments
from entropo.algorithms.empg import empg, empg_step_advantages
from entropo.batch import Batch
from entropo.models.tiny import tiny_tokenizer

SPEC_FINAL = [[1.43435, 0.64677, 0.90760], [-0.63252, -1.27985, -1.07635]]


class WordTokenizer:
    """A fake tokenizer whose tokens are whole strings (to test merged tokens such as '. ')."""

    def __init__(self, vocab):
        self.vocab = list(vocab)

    def batch_decode(self, ids, skip_special_tokens=True):
        return [self.vocab[i[0]] for i in ids]


def turn_batch(step_lengths, step_entropies, advantages, prompt_len=2):
    """Rows with a 2-token prompt, then response steps given as turns (turn_ids), right padding."""
    rows = [sum(r) for r in step_lengths]
    width = prompt_len + max(rows) + 1
    B = len(rows)
    response_mask = torch.zeros(B, width)
    turn_ids = torch.zeros(B, width, dtype=torch.long)
    entropy = torch.zeros(B, width)
    for b, (lengths, ents) in enumerate(zip(step_lengths, step_entropies)):
        t = prompt_len
        for s, (n, h) in enumerate(zip(lengths, ents)):
            response_mask[b, t:t + n] = 1
            turn_ids[b, t:t + n] = s + 10  # arbitrary ids: only their order matters
            entropy[b, t:t + n] = h
            t += n
    batch = Batch(input_ids=torch.ones(B, width, dtype=torch.long), attention_mask=(response_mask > 0).long() | 1,
                  response_mask=response_mask, rewards=torch.zeros(B), group_ids=torch.zeros(B, dtype=torch.long),
                  turn_ids=turn_ids, old_entropy=entropy)
    batch.advantages = torch.tensor(advantages, dtype=torch.float32)[:, None] * response_mask
    return batch


def test_registered():
    assert registry.get("shaping", "empg") is empg
    assert registry.meta("shaping", "empg")["stage"] == "advantage"


def test_spec_toy_flat():
    # rlvr.md §7 (f): H = [[.2,.8,.5],[1,.4,.6]] -> min 0.2, max 1.0 -> Ĥ = [[0,.75,.375],[1,.25,.5]];
    # g = exp(-Ĥ)/mean(exp(-Ĥ)): mean(exp(-Ĥ)) = (1+.47237+.68729+.36788+.77880+.60653)/6 = 0.65215
    # -> g = [[1.53340,.72433,1.05389],[.56411,1.19422,.93006]]; bonus = 0.1*exp(-Ĥ_next): [.04724,.06873,0],
    # [.07788,.06065,0]; A_mod = A*g + bonus; A_final = A_mod - mean(A_mod) (= 0.14629).
    h = torch.tensor([0.2, 0.8, 0.5, 1.0, 0.4, 0.6])
    a = torch.tensor([1.0, 1, 1, -1, -1, -1])
    last = torch.tensor([False, False, True, False, False, True])
    out = empg_step_advantages(a, h, last, k=1.0, k_future=1.0, zeta=0.1)
    torch.testing.assert_close(out["scale"], torch.tensor([1.53340, 0.72433, 1.05389, 0.56411, 1.19422, 0.93006]),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(out["modulated"],
                               torch.tensor([1.58064, 0.79306, 1.05389, -0.48623, -1.13356, -0.93006]),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(out["final"], torch.tensor(SPEC_FINAL).flatten(), atol=1e-5, rtol=0)
    assert abs(float(out["scale"].mean()) - 1) < 1e-6 and abs(float(out["final"].mean())) < 1e-6


def test_spec_toy_through_the_shaping_with_turns_of_unequal_length():
    # Steps are turns; each step counts once in the batch statistics whatever its length.
    batch = turn_batch([[1, 3, 2], [2, 1, 4]], [[0.2, 0.8, 0.5], [1.0, 0.4, 0.6]], [1.0, -1.0])
    metrics = empg(batch, step_ctx=None)
    assert metrics["empg_steps"] == 6 and metrics["empg_steps_per_sample"] == 3
    expected = torch.zeros_like(batch.advantages)
    for b, lengths in enumerate([[1, 3, 2], [2, 1, 4]]):
        t = 2
        for s, n in enumerate(lengths):
            expected[b, t:t + n] = SPEC_FINAL[b][s]
            t += n
    torch.testing.assert_close(batch.advantages, expected, atol=1e-5, rtol=0)


def test_masks_honoured_and_final_norm_variants():
    batch = turn_batch([[2, 2], [3]], [[0.3, 0.9], [0.5]], [0.5, -0.5])
    empg(batch)
    assert (batch.advantages[batch.response_mask == 0] == 0).all()
    batch = turn_batch([[2, 2], [3]], [[0.3, 0.9], [0.5]], [0.5, -0.5])
    empg(batch, final_norm="mean_std")
    steps = torch.tensor([batch.advantages[0, 2], batch.advantages[0, 4], batch.advantages[1, 2]])
    assert abs(float(steps.mean())) < 1e-6 and abs(float(steps.std()) - 1) < 1e-4
    with pytest.raises(ValueError):
        empg(turn_batch([[1]], [[0.1]], [1.0]), final_norm="bogus")


def test_zero_advantage_leaves_only_the_centred_bonus():
    # With A = 0 everywhere, A_mod is the bonus alone; with zeta = 0 it is exactly zero (no gradient).
    batch = turn_batch([[2, 2], [3, 1]], [[0.3, 0.9], [0.5, 0.1]], [0.0, 0.0])
    empg(batch, zeta=0.0)
    assert (batch.advantages == 0).all()


def test_segment_rule_on_character_tokens():
    tok = tiny_tokenizer()
    text = "So 3.5 is it. Next\nok!"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    seg = segments.segment_text_ids(ids, tok, "sentences")
    # new segment after "." of "it." (followed by a space) and after "\n"; "3.5" does not split
    pieces = {}
    for ch, s in zip(text, seg):
        pieces[s] = pieces.get(s, "") + ch
    assert list(pieces.values()) == ["So 3.5 is it.", " Next\n", "ok!"]
    assert segments.segment_text_ids(ids, tok, "lines") == [0] * 19 + [1] * 3
    assert set(segments.segment_text_ids(ids, tok, "none")) == {0}


def test_segment_rule_on_merged_tokens():
    vocab = ["First", " step", ". ", "Then", ".\n", "Done", ".", "<eos>"]
    tok = WordTokenizer(vocab)
    # ". " and ".\n" are single tokens that end a segment; a final "." opens nothing (nothing follows)
    assert segments.segment_text_ids([0, 1, 2, 3, 4, 5, 6], tok) == [0, 0, 0, 1, 1, 2, 2]
    # "." followed by a token starting with a space splits; followed by a letter it does not
    assert segments.segment_text_ids([0, 6, 1], tok) == [0, 0, 1]
    assert segments.segment_text_ids([0, 6, 3], tok) == [0, 0, 0]


def test_step_ids_text_path_and_tokenizer_from_step_ctx():
    tok = tiny_tokenizer()
    prompt = tok("1+2=", add_special_tokens=False)["input_ids"]
    resp = tok("a.\nb", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt + resp])
    response_mask = torch.tensor([[0.0] * len(prompt) + [1.0] * len(resp)])
    batch = Batch(input_ids=ids, attention_mask=torch.ones_like(ids), response_mask=response_mask,
                  rewards=torch.zeros(1), group_ids=torch.zeros(1, dtype=torch.long),
                  old_entropy=torch.tensor([[0.0] * len(prompt) + [0.1, 0.2, 0.3, 0.9]]))
    assert segments.step_ids(batch, tok).tolist() == [[-1] * len(prompt) + [0, 0, 0, 1]]
    batch.advantages = response_mask.clone()
    metrics = empg(batch, step_ctx=SimpleNamespace(tokenizer=tok))
    assert metrics["empg_steps"] == 2
    with pytest.raises(ValueError):
        segments.step_ids(batch, None)
