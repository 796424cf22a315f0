"""Pairwise preference learning: linked pairs in the Batch, the DPO/IPO/cDPO/hinge/INPO family (hand values), exact
toys (INPO's regularized Nash game, DID's categorical toy), the pair builder, offline preference data, and the loop
(accumulation over micro-batches, snapshot checkpointing, one-command offline DPO)."""

import json
import math

import pytest
import torch

from entropo import checkpoint, models, ops
from entropo.algorithms.preferences import (
    comparisons,
    did_entropy,
    dpo,
    dpo_pair_loss,
    inpo,
    inpo_pair_loss,
    preference_pairs,
)
from entropo.batch import Batch
from entropo.components import Bound
from entropo.config import ConfigError, check_components, load_recipe
from entropo.reproduce.runner import RECIPES_DIR
from entropo.logging import TIMING_KEYS, read_metrics
from entropo.tasks.preferences import arithmetic_preferences, preferences, write_arithmetic_preferences
from entropo.trainer import accumulate_gradients, train
from entropo.types import Example, Sample


# ---- hand values ------------------------------------------------------------------------------------------------------

def test_dpo_family_hand_values():
    d = torch.tensor([1.0])
    # sigmoid: -log sigma(0.5) = log(1 + e^-0.5)
    assert float(dpo_pair_loss(d, 0.5, "sigmoid")) == pytest.approx(math.log(1 + math.exp(-0.5)), abs=1e-6)
    assert float(dpo_pair_loss(d, 0.5, "sigmoid")) == pytest.approx(0.474077, abs=1e-6)
    # conservative DPO eps = 0.1: 0.9 * 0.474077 + 0.1 * log(1 + e^0.5) = 0.524077
    assert float(dpo_pair_loss(d, 0.5, "sigmoid", 0.1)) == pytest.approx(0.524077, abs=1e-6)
    assert float(dpo_pair_loss(d, 0.5, "hinge")) == pytest.approx(0.5)
    assert float(dpo_pair_loss(torch.tensor([3.0]), 0.5, "hinge")) == 0.0
    assert float(dpo_pair_loss(d, 0.5, "ipo")) == pytest.approx(0.0)  # target 1/(2 beta) = 1
    assert float(dpo_pair_loss(torch.tensor([3.0]), 0.25, "ipo")) == pytest.approx(1.0)  # (3 - 2)^2
    with pytest.raises(ValueError, match="loss must be one of"):
        dpo_pair_loss(d, 0.5, "kto")


def test_inpo_hand_value_and_special_cases():
    # log-ratios policy 2.0, reference 0.5, previous 1.3; eta 0.5, eta*tau 0.2: h = 0.86, (0.86 - 0.25)^2 = 0.3721
    loss = inpo_pair_loss(torch.tensor(2.0), torch.tensor(0.5), torch.tensor(1.3), eta=0.5, tau=0.4)
    assert float(loss) == pytest.approx(0.3721, abs=1e-6)
    # eta*tau = 1: IPO against pi_ref with beta = 1/eta, i.e. (Delta - eta/2)^2
    x = torch.tensor(1.7)
    ipo_loss = dpo_pair_loss(torch.tensor(1.7 - 0.5), 1 / 0.8, "ipo")
    assert float(inpo_pair_loss(x, torch.tensor(0.5), torch.tensor(9.0), eta=0.8, tau=1 / 0.8)) == pytest.approx(
        float(ipo_loss), abs=1e-6)


def _pair_batch(seq_logps, ref_logps, pair_ids, ranks, prev_logps=None, L=3):
    """Rows whose per-token log-probs spread each sequence log-prob over L tokens (all response tokens)."""
    B = len(seq_logps)
    mask = torch.ones(B, L)
    tok = lambda v: torch.tensor(v, dtype=torch.float32)[:, None].expand(B, L) / L  # noqa: E731
    batch = Batch(input_ids=torch.zeros(B, L, dtype=torch.long), attention_mask=torch.ones(B, L, dtype=torch.long),
                  response_mask=mask, rewards=torch.zeros(B), group_ids=torch.arange(B),
                  pair_ids=torch.tensor(pair_ids), pair_rank=torch.tensor(ranks))
    batch.ref_logprobs = tok(ref_logps).clone()
    batch.old_logprobs = tok(seq_logps).clone()
    if prev_logps is not None:
        batch.snapshot_logprobs = tok(prev_logps).clone()
    return batch, tok(seq_logps).clone()


def test_pairwise_objectives_on_a_micro_batch_match_hand_values():
    # pair 0: rows 0 (chosen) / 2 (rejected); pair 1: row 3 chosen, row 1 rejected (order inside the batch is free)
    batch, lp = _pair_batch([-1.0, -4.0, -3.0, -2.0], [-2.0, -3.0, -2.5, -2.0], [0, 1, 0, 1], [0, 1, 1, 0],
                            prev_logps=[-1.5, -3.5, -2.0, -2.5])
    z = torch.zeros_like(lp)
    per_row, m = dpo(lp, batch.old_logprobs, z, batch.response_mask, micro_batch=batch, beta=0.5)
    # r = logp - ref: [1, -1, -0.5, 0]; Delta pair0 = 1 - (-0.5) = 1.5, pair1 = 0 - (-1) = 1
    exp0, exp1 = math.log(1 + math.exp(-0.75)), math.log(1 + math.exp(-0.5))
    assert per_row.tolist() == pytest.approx([exp0, 0.0, 0.0, exp1], abs=1e-6)  # on the chosen rows
    assert float(m["pref_margin"]) == pytest.approx(1.25)
    assert float(m["pref_accuracy"]) == 1.0
    assert float(m["chosen_logratio"]) == pytest.approx(0.5)
    # candidate-set DID: q over {chosen, rejected} ∝ exp(r): pair0 r = (1, -0.5), pair1 (0, -1)
    def h2(a, b):
        p = 1 / (1 + math.exp(b - a))
        return -(p * math.log(p) + (1 - p) * math.log(1 - p))
    assert float(m["did_entropy"]) == pytest.approx((h2(1, -0.5) + h2(0, -1)) / 2, abs=1e-6)
    per_row, _ = inpo(lp, batch.old_logprobs, z, batch.response_mask, micro_batch=batch, eta=0.5, tau=0.4)
    # pair0: policy ratio -1 - (-3) = 2, ref -2 - (-2.5) = 0.5, prev -1.5 - (-2) = 0.5 -> h = 2 - 0.1 - 0.4 = 1.5
    assert float(per_row[0]) == pytest.approx((1.5 - 0.25) ** 2, abs=1e-6)
    no_pairs = Batch(input_ids=torch.zeros(2, 3, dtype=torch.long), attention_mask=torch.ones(2, 3, dtype=torch.long),
                     response_mask=torch.ones(2, 3), rewards=torch.zeros(2), group_ids=torch.arange(2))
    with pytest.raises(ValueError, match="preference_pairs"):
        dpo(lp[:2], lp[:2], z[:2], torch.ones(2, 3), micro_batch=no_pairs)


def test_ranked_rows_give_every_ordered_comparison():
    better, worse = comparisons(torch.tensor([5, 5, 5, -1, 7, 7]), torch.tensor([2, 0, 1, 0, 1, 0]))
    assert sorted(zip(better.tolist(), worse.tolist())) == [(1, 0), (1, 2), (2, 0), (5, 4)]
    batch, _ = _pair_batch([0.0] * 6, [0.0] * 6, [5, 5, 5, -1, 7, 7], [2, 0, 1, 0, 1, 0])
    assert batch.num_comparisons() == 4


# ---- pair linking through shuffling and splitting ------------------------------------------------------------------

def _linked(B, seed):
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(B, generator=g)
    pair_ids = torch.full((B,), -1)
    n_pairs = B // 3
    for p in range(n_pairs):  # pairs at random positions, some rows unlinked
        pair_ids[perm[2 * p]], pair_ids[perm[2 * p + 1]] = p, p
    L = 10
    attention = torch.zeros(B, L, dtype=torch.long)
    for b in range(B):
        attention[b, : 2 + int(torch.randint(0, L - 2, (1,), generator=g))] = 1
    return Batch(input_ids=torch.arange(B)[:, None].expand(B, L).clone(), attention_mask=attention,
                 response_mask=attention.float(), rewards=torch.zeros(B), group_ids=torch.arange(B),
                 pair_ids=pair_ids, pair_rank=(torch.arange(B) % 2))


def _check_chunks(batch, chunks):
    rows = torch.cat(chunks).tolist()
    assert sorted(rows) == list(range(batch.size))  # every row exactly once
    where = {r: i for i, c in enumerate(chunks) for r in c.tolist()}
    for p in set(batch.pair_ids.tolist()) - {-1}:
        members = (batch.pair_ids == p).nonzero().flatten().tolist()
        assert len({where[r] for r in members}) == 1, f"pair {p} separated"


@pytest.mark.parametrize("seed", range(6))
def test_shuffle_and_splits_never_separate_a_pair(seed):
    batch = _linked(13 + seed, seed)
    g = torch.Generator().manual_seed(seed)
    for parts in (1, 2, 3, 5):
        _check_chunks(batch, batch.shuffled_units(g, parts))
    for mbs in (1, 2, 3, 4):
        chunks = [rows for rows, _ in batch.split_by_length(mbs)]
        _check_chunks(batch, chunks)
        assert all(len(c) <= max(mbs, 2) for c in chunks)
        for rows, micro in batch.split_by_length(mbs):  # the micro-batch holds those rows, pair fields sliced along
            assert micro.input_ids[:, 0].tolist() == rows.tolist()
            assert torch.equal(micro.pair_ids, batch.pair_ids[rows])
        split = batch.split(mbs)
        assert sum(m.size for m in split) == batch.size
        for m in split:
            ids = [p for p in m.pair_ids.tolist() if p >= 0]
            assert all(ids.count(p) == 2 for p in ids)


def test_without_pairs_mini_batching_is_the_plain_permutation():
    batch = _linked(11, 0)
    batch.pair_ids = None
    a = batch.shuffled_units(torch.Generator().manual_seed(4), 3)
    b = [c.sort().values for c in torch.randperm(11, generator=torch.Generator().manual_seed(4)).chunk(3)]
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and len(a) == len(b)
    lengths = batch.attention_mask.sum(-1)
    order = torch.sort(lengths, stable=True).indices
    assert [r.tolist() for r, _ in batch.split_by_length(4)] == [c.tolist() for c in order.split(4)]


PAIRWISE = [("dpo", {"beta": 0.3}), ("dpo", {"beta": 0.3, "loss": "ipo"}),
            ("dpo", {"loss": "hinge", "label_smoothing": 0.1}), ("inpo", {"eta": 0.5, "tau": 0.4})]


def test_accumulation_over_micro_batches_equals_full_batch_for_pairwise_losses(tiny_recipe_overrides):
    model, tok = models.tiny(seed=0)
    g = torch.Generator().manual_seed(1)
    B, L = 8, 10
    input_ids = torch.randint(4, model.config.vocab_size, (B, L), generator=g)
    attention = torch.ones(B, L, dtype=torch.long)
    response = torch.zeros(B, L)
    for b in range(B):
        response[b, 4: 5 + b % 5] = 1
        attention[b, 5 + b % 5:] = 0
    batch = Batch(input_ids=input_ids, attention_mask=attention, response_mask=response, rewards=torch.zeros(B),
                  group_ids=torch.arange(B) // 2, pair_ids=torch.tensor([0, 1, 2, 0, 3, 1, 3, 2]),
                  pair_rank=torch.tensor([0, 1, 0, 1, 1, 0, 0, 1]))
    with torch.no_grad():
        lp, _ = ops.token_logprobs_and_entropy(model, input_ids, attention, compute_mask=response)
    batch.old_logprobs = lp * response
    batch.ref_logprobs = (lp + 0.3 * torch.randn(B, L, generator=g)) * response
    batch.snapshot_logprobs = (lp + 0.2 * torch.randn(B, L, generator=g)) * response
    batch.advantages = torch.zeros(B, L)
    recipe = load_recipe(None, tiny_recipe_overrides)
    for objective, params in PAIRWISE:
        bound = Bound("objective", objective, params)
        grads, losses = [], []
        for mbs in (8, 3):  # 3: pairs packed two rows at a time (a third row would split one), never split
            recipe.train.micro_batch_size = mbs
            model.zero_grad()
            out = accumulate_gradients(model, batch, recipe, bound, [])
            losses.append(out["actor/loss"])
            grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        assert grads[0].abs().sum() > 0
        scale = float(grads[0].abs().max())
        for other in grads[1:]:
            torch.testing.assert_close(other, grads[0], rtol=1e-4, atol=1e-5 * scale)
        assert losses[1] == pytest.approx(losses[0], rel=1e-5)


# ---- exact toys ---------------------------------------------------------------------------------------------------

def _lbfgs(theta, loss_fn, iters=100):
    opt = torch.optim.LBFGS([theta], max_iter=iters, line_search_fn="strong_wolfe", tolerance_grad=1e-12,
                            tolerance_change=1e-15)

    def closure():
        opt.zero_grad()
        value = loss_fn(theta)
        value.backward()
        return value

    opt.step(closure)
    return torch.softmax(theta.detach(), 0)


def _tv(p, q):
    return float(0.5 * (p - q).abs().sum())


def test_inpo_exact_toy_reaches_the_regularized_nash_equilibrium_while_dpo_on_bt_does_not():
    """INPO (arXiv 2407.00617): 6 responses, a rock-paper-scissors cycle (0 > 1 > 2 > 0) plus dominated responses.
    (1) the minimiser of INPO's expected pair loss is the online-mirror-descent step
    pi_{t+1} ∝ pi_t^{1-eta tau} pi_ref^{eta tau} exp(eta P(y > pi_t)); (2) iterating it reaches the KL-regularized
    Nash equilibrium pi* ∝ pi_ref exp(P(y > pi*)/tau) (solved independently by a damped fixed point); (3) DPO on a
    Bradley-Terry fit of the same comparisons lands far from it."""
    dt = torch.float64
    P = torch.full((6, 6), 0.5, dtype=dt)

    def setp(i, j, p):
        P[i, j], P[j, i] = p, 1 - p

    setp(0, 1, 0.9), setp(1, 2, 0.9), setp(2, 0, 0.9)
    for i in range(3):
        setp(i, 3, 0.6), setp(i, 4, 0.7), setp(i, 5, 0.95)
    setp(3, 4, 0.6), setp(3, 5, 0.9), setp(4, 5, 0.8)
    ref = torch.softmax(torch.tensor([0.3, -0.2, 0.1, 0.5, 0.0, 0.4], dtype=dt), 0)
    tau, eta = 0.2, 1.0
    nash = ref.clone()
    for _ in range(3000):
        target = ref * torch.exp(P @ nash / tau)
        nash = 0.9 * nash + 0.1 * target / target.sum()
    fixed = ref * torch.exp(P @ nash / tau)
    assert _tv(fixed / fixed.sum(), nash) < 1e-9

    def d(v):
        return v[:, None] - v[None, :]

    pi_t = ref.clone()
    weights = pi_t[:, None] * pi_t[None, :] * P  # y, y' ~ pi_t, y wins with probability P[y, y']

    def expected_loss(theta):
        return (weights * inpo_pair_loss(d(torch.log_softmax(theta, 0)), d(ref.log()), d(pi_t.log()), eta, tau)).sum()

    step = _lbfgs(pi_t.log().clone().requires_grad_(True), expected_loss)
    omd = pi_t ** (1 - eta * tau) * ref ** (eta * tau) * torch.exp(eta * (P @ pi_t))
    assert _tv(step, omd / omd.sum()) < 1e-6
    for _ in range(40):
        nxt = pi_t ** (1 - eta * tau) * ref ** (eta * tau) * torch.exp(eta * (P @ pi_t))
        pi_t = nxt / nxt.sum()
    assert _tv(pi_t, nash) < 1e-3
    scores = torch.zeros(6, dtype=dt, requires_grad=True)
    opt = torch.optim.LBFGS([scores], max_iter=200, line_search_fn="strong_wolfe")

    def bt_nll():
        opt.zero_grad()
        value = -(P * torch.nn.functional.logsigmoid(d(scores))).sum() + 1e-6 * (scores ** 2).sum()
        value.backward()
        return value

    opt.step(bt_nll)
    dpo_opt = ref * torch.exp(scores.detach() / tau)  # the DPO optimum for BT rewards at beta = tau
    assert _tv(dpo_opt / dpo_opt.sum(), nash) > 0.2


@pytest.mark.parametrize("sampler", ["chosen_from_target", "chosen_from_reference"])
def test_did_categorical_toy_dpo_learns_the_target_and_the_did_entropy(sampler):
    """DID (arXiv 2505.23761): 20 outputs, pi* ∝ pi_ref q. Pairs (chosen from pi*, rejected from pi_ref), or the
    paper's sampler pair (chosen from pi_ref, rejected from pi_l ∝ pi_ref^2 / pi*, its optimal rejected sampler for
    that chosen sampler); DPO (beta 1, exact expectation) learns pi* (TV < 0.05), the learned policy's DID entropy is
    H(q), and the chosen log-likelihood change is far larger for low-entropy q than for high-entropy q."""
    dt = torch.float64
    g = torch.Generator().manual_seed(0)
    ref = torch.softmax(torch.randn(20, generator=g, dtype=dt), 0)
    q_low = torch.full((20,), 1e-3, dtype=dt)
    q_low[3], q_low[11] = 1.0, 0.8
    q_high = torch.exp(0.1 * torch.randn(20, generator=g, dtype=dt))
    changes, entropies = [], []
    for q in (q_low / q_low.sum(), q_high / q_high.sum()):
        target = ref * q / (ref * q).sum()
        if sampler == "chosen_from_target":
            chosen, rejected = target, ref
        else:
            rejected = ref ** 2 / target
            chosen, rejected = ref, rejected / rejected.sum()
        w = chosen[:, None] * rejected[None, :]

        def loss(theta):
            r = torch.log_softmax(theta, 0) - ref.log()
            return (w * dpo_pair_loss(r[:, None] - r[None, :], 1.0)).sum()

        pi = _lbfgs(ref.log().clone().requires_grad_(True), loss, iters=150)
        assert _tv(pi, target) < 0.05
        assert float(did_entropy(pi.log(), ref.log())) == pytest.approx(float(-(q * q.log()).sum() / q.sum()), abs=0.02)
        entropies.append(float(did_entropy(pi.log(), ref.log())))
        changes.append(float((chosen * (pi.log() - ref.log())).sum()))  # mean chosen log-likelihood change
    assert entropies[0] < 1.0 < 2.5 < entropies[1]
    assert abs(changes[0]) > 20 * abs(changes[1])


# ---- pair builder, offline data ------------------------------------------------------------------------------------

def _rows(rewards, correct, groups, texts):
    B = len(rewards)
    ex = Example(prompt="p")
    return Batch(input_ids=torch.arange(B)[:, None].expand(B, 3).clone(), attention_mask=torch.ones(B, 3, dtype=torch.long),
                 response_mask=torch.ones(B, 3), rewards=torch.tensor(rewards), group_ids=torch.tensor(groups),
                 correct=torch.tensor(correct), finished=torch.ones(B, dtype=torch.bool),
                 info={"completion": list(texts), "sample": [Sample(completion=t, example=ex, task=None) for t in texts]})


def test_preference_pairs_from_verifier_reward_matrix_and_judge():
    batch = _rows([1.0, 0.0, 0.0, 1.0, 0.5, 0.2, 0.9, 0.1], [True, False, False, True, True, True, True, True],
                  [0, 0, 0, 0, 1, 1, 2, 2], ["a", "b", "c", "d", "e", "f", "g", "h"])
    out = preference_pairs(batch, None, source="verifier", pairs_per_group=2)
    assert out.displaced == list(range(8))
    assert out.rows.input_ids[:, 0].tolist() == [0, 1, 3, 2]  # correct rows 0, 3 with wrong rows 1, 2
    assert out.rows.pair_ids.tolist() == [0, 0, 1, 1] and out.rows.pair_rank.tolist() == [0, 1, 0, 1]
    assert out.metrics["groups_without_pair_frac"] == pytest.approx(2 / 3)  # groups 1, 2 are all correct
    out = preference_pairs(batch, None, source="reward", pairs_per_group=1)
    assert out.rows.input_ids[:, 0].tolist() == [0, 2, 4, 5, 6, 7]  # best vs worst per group (stable sort on ties)
    cands = ["a", "b", "c", "d", "e", "f", "g", "h"]
    matrix = [[0.5] * 8 for _ in range(8)]
    matrix[6][7], matrix[7][6] = 0.2, 0.8  # h beats g
    out = preference_pairs(batch, None, source="matrix", matrix=matrix, candidates=cands)
    assert out.rows.input_ids[:, 0].tolist() == [7, 6]  # only the decided comparison becomes a pair
    out = preference_pairs(batch, None, source="judge", pairs_per_group=2,
                           judge=lambda prompt, a, b: 0.9 if a < b else 0.1)
    assert out.rows.input_ids[:, 0].tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
    out = preference_pairs(batch, None, source="judge", judge=f"{__name__}:_no_such_judge")
    assert out.metrics["pairs"] == 0 or out.rows is None
    with pytest.raises(ValueError, match="source must be one of"):
        preference_pairs(batch, None, source="oracle")


def _no_such_judge(prompt, a, b):
    return None


def test_preference_file_task_split_and_errors(tmp_path):
    path = write_arithmetic_preferences(str(tmp_path / "p.jsonl"), n=50, seed=3)
    rows = [json.loads(line) for line in open(path)]
    assert rows == arithmetic_preferences(50, 3) and len(rows) == 50
    assert all(r["chosen"] != r["rejected"] and eval(r["prompt"][:-1]) == int(r["chosen"]) for r in rows)
    task = preferences(seed=1, eval_size=64, path=path, eval_fraction=0.1)
    held = {e.meta["row"] for e in task.eval_examples()}
    train_rows = {task.train_example(i).meta["row"] for i in range(task.train_size())}
    assert len(held) == 5 and not held & train_rows and len(held | train_rows) == 50
    ex = task.eval_examples()[0]
    assert task.correct(ex.meta["chosen"] + " ", ex) and not task.correct(ex.meta["rejected"], ex)
    assert preferences(seed=1, path=path).eval_examples()[0].meta == ex.meta  # split fixed by the seed
    with pytest.raises(ValueError, match="task.params.chosen_column"):
        preferences(seed=0, path=path, chosen_column="good")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "1+1=", "chosen": "2", "rejected": "3"}\n{"prompt": oops}\n')
    with pytest.raises(ValueError, match="line 2"):
        preferences(seed=0, path=str(bad))
    with pytest.raises(FileNotFoundError, match="task.params.path"):
        preferences(seed=0, path=str(tmp_path / "missing.jsonl"))


def test_replay_engine_plays_chosen_then_rejected():
    from entropo.rollout.replay import PreferenceReplayEngine

    model, tok = models.tiny(seed=0)
    engine = PreferenceReplayEngine(model, tok, chat_template=False)
    task = preferences(seed=0, eval_size=4, builtin_size=20)
    examples = [task.train_example(i) for i in range(3)]
    out = engine.rollout(examples, 2, max_new_tokens=8)
    assert out.completions == [t for e in examples for t in (e.meta["chosen"], e.meta["rejected"])]
    assert [e.env_correct for e in out.episodes] == [True, False] * 3
    for r in range(6):
        ids = out.input_ids[r][out.response_mask[r] > 0].tolist()
        assert tok.decode(ids, skip_special_tokens=True) == out.completions[r]
    assert not engine.records_policy_logprobs
    assert engine.rollout(examples, 4, max_new_tokens=8).completions[:4] == [examples[0].meta["chosen"],
                                                                              examples[0].meta["rejected"]] * 2
    with pytest.raises(ValueError, match="rollout.n=2"):
        engine.rollout(examples, 1, max_new_tokens=8)


# ---- the loop ----------------------------------------------------------------------------------------------------

FAST = ["warmup.steps=0", "task.eval_size=4", "eval.max_prompts=4", "rollout.prompts_per_step=4",
        "logging.tensorboard=false", "logging.plots=false", "logging.progress=false"]


def test_inpo_needs_a_snapshot_interval():
    with pytest.raises(ConfigError, match="train.snapshot_every"):
        check_components(load_recipe(RECIPES_DIR / "inpo.yaml", ["train.snapshot_every=0"], check=False))
    assert load_recipe(RECIPES_DIR / "inpo.yaml", []).needs_snapshot()
    assert load_recipe(RECIPES_DIR / "dpo_offline.yaml", []).needs_reference()


def _strip(rows):
    return [{k: v for k, v in r.items() if not any(k.startswith(t) for t in TIMING_KEYS)} for r in rows]


def test_inpo_snapshot_is_checkpointed_and_resume_is_identical(tmp_path):
    # INPO on replayed offline pairs (every prompt gives a pair, whatever the warm-up reached)
    ov = ["task={name: preferences, params: {builtin_size: 60}}", "rollout.engine=preference_replay", "rollout.n=2",
          *FAST, "train.steps=4", "train.snapshot_every=2", "checkpoint.every=1"]
    straight = train(load_recipe(RECIPES_DIR / "inpo.yaml", ov), run_dir=tmp_path / "a", console=lambda *_: None)
    train(load_recipe(RECIPES_DIR / "inpo.yaml", ov), run_dir=tmp_path / "b", stop_after=3, console=lambda *_: None)
    saved = checkpoint.load(checkpoint.latest(tmp_path / "b"))
    assert saved["snapshot"]["taken_at"] == 2  # the previous iterate of the iteration in progress
    resumed = train(load_recipe(RECIPES_DIR / "inpo.yaml", ov), run_dir=tmp_path / "b", resume=True,
                    console=lambda *_: None)
    assert straight["eval_end"] == resumed["eval_end"]
    a, b = _strip(read_metrics(tmp_path / "a")), _strip(read_metrics(tmp_path / "b"))
    assert a == b
    margins = [r["actor/prev_margin"] for r in a if "actor/prev_margin" in r]
    assert len(margins) == 4
    # each iteration's first step scores pi_t = the policy itself: its margin against the previous iterate is 0
    assert margins[0] == pytest.approx(0.0, abs=1e-5) and margins[2] == pytest.approx(0.0, abs=1e-5)
    assert margins[1] != pytest.approx(0.0, abs=1e-5)


def test_offline_dpo_one_command_from_a_jsonl(tmp_path):
    path = write_arithmetic_preferences(str(tmp_path / "prefs.jsonl"), n=80, seed=0)
    recipe = load_recipe(RECIPES_DIR / "dpo_offline.yaml", FAST + [f"task.params.path={path}", "train.steps=3"])
    summary = train(recipe, run_dir=tmp_path / "run", console=lambda *_: None)
    rows = [r for r in read_metrics(tmp_path / "run") if "actor/pref_margin" in r]
    assert len(rows) == 3 and summary["steps"] == 3
    assert all(r["producer/preference_pairs/pairs"] == 4 for r in rows)  # one pair per replayed prompt
    assert rows[0]["actor/pref_margin"] == pytest.approx(0.0, abs=1e-5)  # the policy starts at the reference
    assert rows[0]["actor/loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert "actor/did_entropy" in rows[0]


def test_concat_keeps_pairs_from_different_batches_apart():
    a, _ = _pair_batch([0.0] * 2, [0.0] * 2, [0, 0], [0, 1])
    b, _ = _pair_batch([0.0] * 4, [0.0] * 4, [0, 1, 1, 0], [1, 0, 1, 0])
    c, _ = _pair_batch([0.0], [0.0], [-1], [0])
    c.pair_ids = c.pair_rank = None  # a batch without links: its rows stay unlinked
    both = Batch.concat([a, c, b])
    assert both.pair_ids.tolist() == [0, 0, -1, 1, 2, 2, 1] and both.pair_rank.tolist() == [0, 1, 0, 1, 0, 1, 0]
    assert both.num_comparisons() == 3
