"""Process rewards: step rewards on tokens, process advantages, PAV's Monte-Carlo prover values (exact vs MC on a
tabular toy), the PRM (save/load, fitting, step labels) and its search scorer."""

from __future__ import annotations

import itertools
import json
import math
from types import SimpleNamespace

import pytest
import torch

from entropo import registry
from entropo.algorithms.pav import (bok_success, mc_prover_values, pav, place_step_rewards, process_advantage,
                                    progress, step_end_mask, zero_signal_group_frac)
from entropo.algorithms.segments import step_ids
from entropo.batch import Batch
from entropo.models.tiny import tiny_tokenizer
from entropo.search.prm import PRM, fit_prm, label_loss, load_prm, prm_scorer, step_labels
from entropo.search.scorers import make_scorer
from entropo.search.steps import Partial, Step
from entropo.types import Example, Sample


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def make_batch(tok, prompt: str, responses: list[str], rewards: list[float], groups: list[int]) -> Batch:
    """Left-padded prompt + right-padded responses, as the trainer lays rows out."""
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    rs = [tok(r, add_special_tokens=False)["input_ids"] for r in responses]
    width = len(p) + max(len(r) for r in rs)
    ids, att, resp = [], [], []
    for r in rs:
        pad = width - len(p) - len(r)
        ids.append(p + r + [tok.pad_token_id] * pad)
        att.append([1] * (len(p) + len(r)) + [0] * pad)
        resp.append([0.0] * len(p) + [1.0] * len(r) + [0.0] * pad)
    ex = Example(prompt=prompt, answer="0", meta={})
    return Batch(torch.tensor(ids), torch.tensor(att), torch.tensor(resp), torch.tensor(rewards),
                 torch.tensor(groups), info={"sample": [Sample(r, ex, None) for r in responses]})


# ---- token mapping -----------------------------------------------------------------------------------------------
def test_step_rewards_land_on_step_end_tokens(tok):
    batch = make_batch(tok, "1+2=", ["3\n4", "5\n\n6x"], [1.0, 0.0], [0, 0])
    sidx = step_ids(batch, tok, "lines")
    # prompt has 4 tokens; row 0: "3","\n","4" -> steps 0,0,1; row 1: "5","\n","\n","6","x" -> 0,0,1,2,2
    assert sidx[0].tolist() == [-1] * 4 + [0, 0, 1, -1, -1]
    assert sidx[1].tolist() == [-1] * 4 + [0, 0, 1, 2, 2]
    ends = step_end_mask(sidx)
    assert ends[0].nonzero().flatten().tolist() == [5, 6]
    assert ends[1].nonzero().flatten().tolist() == [5, 6, 8]
    dense = place_step_rewards(sidx, [[0.5, -0.25], [1.0, 2.0, 3.0]])
    assert dense[0].tolist() == [0, 0, 0, 0, 0, 0.5, -0.25, 0, 0]
    assert dense[1].tolist() == [0, 0, 0, 0, 0, 1.0, 2.0, 0, 3.0]
    with pytest.raises(ValueError, match="row 0 has 2 steps but 1 scores"):
        place_step_rewards(sidx, [[0.5], [1.0, 2.0, 3.0]])


def test_process_advantage_hand_values(tok):
    batch = make_batch(tok, "1+2=", ["1\n2", "3\n4"], [1.0, 0.0], [0, 0])
    sidx = step_ids(batch, tok, "lines")
    batch.token_rewards = place_step_rewards(sidx, [[0.5, -0.25], [0.0, 0.0]])
    ctx = SimpleNamespace(tokenizer=tok)
    # outcome dr_grpo on rewards only: [0.5, -0.5] (the dense rewards are not summed into the outcome)
    step = process_advantage(batch, alpha=2.0, mode="step", outcome="dr_grpo", step_ctx=ctx)
    assert step[0, 4:7].tolist() == pytest.approx([1.5, 1.5, 0.0])
    assert step[1, 4:7].tolist() == pytest.approx([-0.5, -0.5, -0.5])
    assert step[:, :4].abs().sum() == 0
    togo = process_advantage(batch, alpha=2.0, mode="to_go", outcome="dr_grpo", step_ctx=ctx)
    assert togo[0, 4:7].tolist() == pytest.approx([1.0, 1.0, 0.0])
    # the docstring's example: one row, outcome advantage 1 (singleton group, dr_grpo: A = r)
    one = make_batch(tok, "1+2=", ["1\n2"], [1.0], [0])
    one.token_rewards = place_step_rewards(step_ids(one, tok, "lines"), [[0.5, -0.25]])
    assert process_advantage(one, alpha=2.0, outcome="dr_grpo", step_ctx=ctx)[0, 4:].tolist() == \
        pytest.approx([2.0, 2.0, 0.5])
    assert process_advantage(one, alpha=2.0, mode="to_go", outcome="dr_grpo", step_ctx=ctx)[0, 4:].tolist() == \
        pytest.approx([1.5, 1.5, 0.5])
    # without dense rewards it is the outcome estimator itself
    plain = make_batch(tok, "1+2=", ["1\n2", "3\n4"], [1.0, 0.0], [0, 0])
    assert torch.equal(process_advantage(plain, step_ctx=ctx), registry.get("advantage", "grpo")(plain))
    with pytest.raises(ValueError, match="mode must be"):
        process_advantage(batch, mode="sum", step_ctx=ctx)


def test_zero_signal_groups_need_equal_outcomes_and_no_progress(tok):
    # 4 groups of 2 rows: (equal outcomes, no progress) -> no signal; (equal outcomes, one nonzero progress) -> signal;
    # (different outcomes, no progress) -> signal; (equal outcomes 0, progress that cancels to 0 in sum) -> signal
    rewards = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    groups = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    dense = torch.zeros(8, 5)
    dense[3, 2] = 0.25
    dense[6, 1], dense[6, 3] = 0.5, -0.5
    assert zero_signal_group_frac(rewards, groups, dense) == pytest.approx(1 / 4)
    assert zero_signal_group_frac(rewards, groups, torch.zeros(8, 5)) == pytest.approx(3 / 4)  # GRPO's count
    # consistent with process_advantage: a signal-free group gets advantage exactly 0 on every token
    batch = make_batch(tok, "1+2=", ["1\n2", "3\n4"], [1.0, 1.0], [0, 0])
    batch.token_rewards = place_step_rewards(step_ids(batch, tok, "lines"), [[0.0, 0.0], [0.0, 0.0]])
    assert zero_signal_group_frac(batch.rewards, batch.group_ids, batch.token_rewards) == 1.0
    assert process_advantage(batch, step_ctx=SimpleNamespace(tokenizer=tok)).abs().sum() == 0


# ---- PAV on the tabular planted-subsequence toy ------------------------------------------------------------------
M, L, PLANT = 3, 4, (0, 1)
PROBS = torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.5, 0.3], [0.4, 0.2, 0.4], [0.3, 0.3, 0.4]])  # per-position softmax


def contains(seq) -> bool:
    return any(tuple(seq[i:i + len(PLANT)]) == PLANT for i in range(len(seq) - len(PLANT) + 1))


def exact_q_pi(prefix: tuple[int, ...]) -> float:
    """P(a policy completion of ``prefix`` contains the planted pair), by enumeration."""
    total = 0.0
    h = len(prefix)
    for rest in itertools.product(range(M), repeat=L - h):
        p = math.prod(float(PROBS[h + j, t]) for j, t in enumerate(rest))
        total += p * contains(prefix + rest)
    return total


def tabular_complete(gen: torch.Generator):
    def complete(prefixes, n):
        out = []
        for pre in prefixes:
            h = len(pre)
            draws = torch.multinomial(PROBS[h:], n, replacement=True, generator=gen).T if h < L else \
                torch.zeros(n, 0, dtype=torch.long)
            out.append([pre + tuple(int(x) for x in row) for row in draws])
        return out
    return complete


@pytest.mark.parametrize("k", [1, 4])
def test_pav_exact_prover_advantage_matches_monte_carlo(k):
    response = (2, 0, 1, 2)  # the planted pair appears at step 2-3
    prefixes = [response[:h] for h in range(L)]
    q_exact = [bok_success(exact_q_pi(p), k) for p in prefixes] + [float(contains(response))]
    n = 4000
    q_mc = mc_prover_values(prefixes, tabular_complete(torch.Generator().manual_seed(k)), contains, n, k)
    q_mc = q_mc + [float(contains(response))]
    a_exact, a_mc = progress(q_exact), progress(q_mc)
    assert sum(a_exact) == pytest.approx(q_exact[-1] - q_exact[0])  # progress telescopes
    for h, (ae, am) in enumerate(zip(a_exact, a_mc)):
        var = sum(max(0.0, q * (1 - q)) / n for q, last in ((q_exact[h], False), (q_exact[h + 1], h + 1 == L)) if not last)
        assert abs(am - ae) <= 4 * math.sqrt(var) + 1e-6, (h, ae, am)
    # hand check of one exact value: after (2, 0) the pair needs token 1 at position 2 (p=0.2), or 0 then 1 at
    # positions 2, 3 (0.4 * 0.3) -> 0.32
    assert exact_q_pi((2, 0)) == pytest.approx(0.2 + 0.4 * 0.3)


def test_strong_prover_carries_no_progress():
    q = [bok_success(exact_q_pi((2, 0, 1, 2)[:h]), 200) for h in range(L)]
    assert max(abs(a) for a in progress(q[:3])) < 1e-6  # BoK with huge K almost always succeeds: A ~ 0
    with pytest.raises(ValueError, match="n_mc and k"):
        mc_prover_values([()], tabular_complete(torch.Generator()), contains, 0, 1)


# ---- PRM ---------------------------------------------------------------------------------------------------------
def small_prm(seed=0):
    torch.manual_seed(seed)
    return PRM(vocab_size=12, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)


def test_prm_save_load_round_trip(tmp_path):
    model = small_prm()
    seqs = [[1, 2, 3, 4], [5, 6], [7]]
    before = model.predict(seqs, [[0, 3], [1], [0]])
    model.save(tmp_path / "prm")
    assert sorted(p.name for p in (tmp_path / "prm").iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((tmp_path / "prm" / "config.json").read_text())["kind"] == "entropo_prm"
    from safetensors.torch import load_file  # plain tensors, no pickle

    assert set(load_file(str(tmp_path / "prm" / "model.safetensors"))) == set(model.state_dict())
    again = load_prm(tmp_path / "prm")
    assert again.predict(seqs, [[0, 3], [1], [0]]) == before
    assert again.predict_last(seqs) == [before[0][1], before[1][0], before[2][0]]
    # left padding does not change a sequence's values
    assert again.predict_last([[7]]) == pytest.approx([before[2][0]], abs=1e-5)
    with pytest.raises(ValueError, match="needs config.json and model.safetensors"):
        load_prm(tmp_path / "nowhere")


def test_prm_fits_step_labels():
    # label of a step = whether its last token is 3 (soft labels 0.9 / 0.1)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(16):
        seq = torch.randint(1, 6, (6,), generator=gen).tolist()
        ends = [1, 3, 5]
        rows.append((seq, ends, [0.9 if seq[e] == 3 else 0.1 for e in ends]))
    model = small_prm()
    before = label_loss(model, rows)
    fit_prm(model, rows, steps=60, batch_size=16, lr=2e-2, seed=0)
    after = label_loss(model, rows)
    assert after["bce"] < before["bce"] - 0.1
    assert after["agreement"] == 1.0


def partial_of(tok, example, prompt: str, lines: list[str], finished: bool) -> Partial:
    steps = tuple(Step(tuple(tok(s, add_special_tokens=False)["input_ids"]), (), "stop") for s in lines)
    return Partial(example, tuple(tok(prompt, add_special_tokens=False)["input_ids"]), steps, finished)


def test_checker_step_labels(tok):
    ex = Example(prompt="3+5+8+2=", answer="18", meta={"operands": [3, 5, 8, 2], "ops": ["+", "+", "+"]})
    task = SimpleNamespace(correct=lambda text, e: text.strip().split("\n")[-1].split("=")[-1] == e.answer)
    wrong = partial_of(tok, ex, "3+5+8+2=", ["3+5=8\n", "8+8=17\n", "17+2=19"], True)
    right = partial_of(tok, ex, "3+5+8+2=", ["3+5=8\n", "8+8=16\n", "16+2=18"], True)
    rows = step_labels([wrong, right], task, tok, labels="checker")
    assert [r[2] for r in rows] == [[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]]
    ids, ends, _ = rows[0]
    assert ends == [8 + 6 - 1, 8 + 6 + 7 - 1, len(ids) - 1]  # step-end positions in prompt + response ids
    assert tok.decode([ids[ends[0]]]) == "\n"


def test_prm_scorer_protocol(tmp_path, tok):
    model = small_prm()
    model.save(tmp_path / "prm")
    scorer = make_scorer("entropo.search.prm:prm_scorer", task=None, tokenizer=tok, sampler=None,
                         path=str(tmp_path / "prm"))
    assert scorer.name == "prm"
    ex = Example(prompt="1", meta={})
    p = Partial(ex, (1, 2), (Step((3, 4), (), "stop"), Step((5,), (), "eos")), True)
    empty = Partial(ex, (1, 2))
    last = scorer.score([p, empty])
    ref = load_prm(tmp_path / "prm")
    assert last == pytest.approx(ref.predict_last([[1, 2, 3, 4, 5], [1, 2]]))
    mins = prm_scorer(path=str(tmp_path / "prm"), reduce="min").score([p])
    assert mins[0] == pytest.approx(min(ref.predict([[1, 2, 3, 4, 5]], [[3, 4]])[0]))
    assert scorer.score([]) == []
    with pytest.raises(ValueError, match="needs path"):
        prm_scorer()


def test_pav_shaping_from_a_learned_pav(tmp_path, tok):
    """source='prm': step progress = difference of consecutive PRM predictions, on step-end tokens."""
    vocab = len(tok)
    torch.manual_seed(0)
    model = PRM(vocab_size=vocab, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
    model.save(tmp_path / "prm")
    batch = make_batch(tok, "1+2=", ["3\n4", "5\n\n6x"], [1.0, 0.0], [0, 0])
    ctx = SimpleNamespace(tokenizer=tok)
    metrics = pav(batch, source="prm", prm_path=str(tmp_path / "prm"), scale=2.0, step_ctx=ctx)
    p = tok("1+2=", add_special_tokens=False)["input_ids"]
    r0 = tok("3\n4", add_special_tokens=False)["input_ids"]
    q = model.predict_last([p, p + r0[:2], p + r0])  # before step 1, after step 1, after step 2 (the outcome)
    assert batch.token_rewards[0].tolist() == pytest.approx(
        [0, 0, 0, 0, 0, 2 * (q[1] - q[0]), 2 * (q[2] - q[1]), 0, 0], abs=1e-6)
    assert metrics["pav_steps"] == 2.5
    assert metrics["pav_zero_signal_group_frac"] == 0.0  # outcomes differ (1, 0): the group has a signal
    assert (batch.token_rewards[batch.response_mask == 0] == 0).all()
    with pytest.raises(ValueError, match="source must be"):
        pav(batch, source="oracle", step_ctx=ctx)


def test_cli_scorer_param_is_parsed_or_one_clear_error():
    from typer.testing import CliRunner

    from entropo.cli import app

    out = CliRunner().invoke(app, ["search", "tiny", "--task", "arith_chain", "--scorer-param", "oops"])
    assert out.exit_code != 0 and "--scorer-param 'oops': expected KEY=VALUE" in out.output
