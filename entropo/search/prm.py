"""A process reward model (PRM / learned PAV): a small causal transformer with a value head, trained on step labels.

The model reads token ids (prompt + response so far) and predicts, at every position, the probability that the
response succeeds from there; its prediction at a step's last token is that step's value. It is "a verifier model
trained by regression on Monte-Carlo estimates of Q^μ" of PAV ("Rewarding Progress: Scaling Automated Process
Verifiers for LLM Reasoning", Setlur et al., arXiv 2410.08146; progress = difference of consecutive predictions, see
``entropo.algorithms.pav``), or a classic PRM when the labels come from a step checker (``labels="checker"``: the
``arith_steps`` process checker, a stand-in for the tool-grounded verifier of TaTToo, arXiv 2510.06217 — only its
scorer interface is kept). Soft labels, binary cross-entropy at step-end tokens.

- ``PRM``: a ``LlamaModel`` backbone (the tiny model's architecture; optionally initialised from the policy's own
  weights: a value head on the policy) + a linear head. ``save(dir)`` writes ``config.json`` and
  ``model.safetensors`` (no pickle); ``load_prm(dir)`` reads them back.
- ``step_labels``: Monte-Carlo (fraction of ``n_mc`` policy completions that are correct; the full response: its
  outcome) or checker labels for every step prefix of sampled responses.
- ``prm_scorer``: the ``StepScorer`` for search, ``entropo search ... --scorer entropo.search.prm:prm_scorer``
  with ``path=<folder>`` (the value at the partial's last token; ``reduce="min"`` takes the minimum over its
  step ends, the usual PRM aggregation).
- program ``prm_train`` (``entropo run prm_train``): warm up a recipe's policy, sample training responses, label
  them, fit the PRM, save it to ``OUT/prm``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from entropo.registry import register
from entropo.search.steps import Partial, root

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


class PRM(nn.Module):
    """Causal transformer + value head: ``forward(input_ids, attention_mask) -> logits [B, L]`` (sigmoid = value)."""

    def __init__(self, vocab_size: int, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
                 intermediate_size: int = 256, max_position_embeddings: int = 512, pad_token_id: int = 0):
        super().__init__()
        from transformers import LlamaConfig, LlamaModel

        self.settings = {"vocab_size": vocab_size, "hidden_size": hidden_size, "num_layers": num_layers,
                         "num_heads": num_heads, "intermediate_size": intermediate_size,
                         "max_position_embeddings": max_position_embeddings, "pad_token_id": pad_token_id}
        config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
                             num_hidden_layers=num_layers, num_attention_heads=num_heads,
                             num_key_value_heads=num_heads, max_position_embeddings=max_position_embeddings,
                             pad_token_id=pad_token_id)
        self.backbone = LlamaModel(config)
        self.head = nn.Linear(hidden_size, 1)
        self.pad_token_id = pad_token_id

    @classmethod
    def from_policy(cls, model: Any) -> "PRM":
        """A PRM whose backbone starts from a causal LM's own transformer (a value head on the policy)."""
        cfg = model.config
        prm = cls(cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads,
                  cfg.intermediate_size, cfg.max_position_embeddings, int(cfg.pad_token_id or 0))
        prm.backbone.load_state_dict(model.model.state_dict())
        return prm

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # positions count real tokens only, as in the policy's scoring pass (with RoPE the left padding of a batch
        # changes only absolute positions, so values agree across paddings up to rounding either way)
        positions = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                               position_ids=positions).last_hidden_state
        return self.head(hidden).squeeze(-1)

    def _pad(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(1, max(len(s) for s in seqs))
        device = next(self.parameters()).device
        ids = torch.tensor([[self.pad_token_id] * (width - len(s)) + list(s) for s in seqs], device=device)
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=device)
        return ids, mask

    @torch.no_grad()
    def predict(self, seqs: list[list[int]], positions: list[list[int]], batch_size: int = 64) -> list[list[float]]:
        """Values (probabilities) at ``positions[i]`` (indices into ``seqs[i]``) of each sequence."""
        was = self.training
        self.eval()
        out: list[list[float]] = []
        for start in range(0, len(seqs), batch_size):
            chunk, pos = seqs[start:start + batch_size], positions[start:start + batch_size]
            ids, mask = self._pad(chunk)
            probs = torch.sigmoid(self(ids, mask))
            width = ids.shape[1]
            for r, (s, ps) in enumerate(zip(chunk, pos)):
                out.append([float(probs[r, width - len(s) + p]) for p in ps])
        self.train(was)
        return out

    def predict_last(self, seqs: list[list[int]]) -> list[float]:
        """The value at each sequence's last token."""
        return [v[0] for v in self.predict(seqs, [[len(s) - 1] for s in seqs])]

    def save(self, directory: str | Path) -> Path:
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        (d / CONFIG_FILE).write_text(json.dumps({"kind": "entropo_prm", **self.settings}, indent=1))
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, str(d / WEIGHTS_FILE))
        return d


def load_prm(directory: str | Path) -> PRM:
    """A PRM saved by ``PRM.save`` (``config.json`` + ``model.safetensors``)."""
    from safetensors.torch import load_file

    d = Path(directory)
    cfg_file = d / CONFIG_FILE
    if not cfg_file.is_file() or not (d / WEIGHTS_FILE).is_file():
        raise ValueError(f"PRM folder {str(d)!r} needs {CONFIG_FILE} and {WEIGHTS_FILE} (written by PRM.save / "
                         "`entropo run prm_train`)")
    cfg = json.loads(cfg_file.read_text())
    if cfg.pop("kind", None) != "entropo_prm":
        raise ValueError(f"{cfg_file} is not an entropo PRM config (kind != 'entropo_prm')")
    model = PRM(**cfg)
    model.load_state_dict(load_file(str(d / WEIGHTS_FILE)))
    model.eval()
    return model


# ---- labels ------------------------------------------------------------------------------------------------------
def step_prefixes(partial: Partial) -> list[Partial]:
    """The partials after steps 1..H of a finished partial (the last is the partial itself)."""
    return [Partial(partial.example, partial.prompt_ids, partial.steps[:h], h == len(partial.steps) and
                    partial.finished) for h in range(1, len(partial.steps) + 1)]


def step_labels(responses: list[Partial], task: Any, tokenizer: Any, *, labels: str = "mc", sampler: Any = None,
                n_mc: int = 4) -> list[tuple[list[int], list[int], list[float]]]:
    """Training rows ``(ids, step-end positions, labels)``: one per response, a label per step.

    ``labels="mc"``: step h < H gets the fraction of ``n_mc`` completions (``sampler.complete``) of steps 1..h that
    the task's verifier accepts; the last step gets the response's own outcome (0/1). ``labels="checker"``: 1 while
    every line so far is a correct step of the chain (``arith_steps`` checker, task ``arith_chain``), else 0."""
    from entropo.search.scorers import ArithStepScorer

    if labels not in ("mc", "checker"):
        raise ValueError(f"step_labels: labels must be 'mc' or 'checker', got {labels!r}")
    rows = []
    open_prefixes, where = [], []
    per_row: list[list[float | None]] = []
    for i, resp in enumerate(responses):
        prefixes = step_prefixes(resp)
        values: list[float | None] = []
        for h, p in enumerate(prefixes):
            last = h == len(prefixes) - 1
            if labels == "checker":
                meta = p.example.meta
                # an unfinished prefix ends with its step's newline: every line of it is checked
                v = ArithStepScorer.check(p.text(tokenizer), meta["operands"], meta["ops"], last)
                values.append(0.0 if v == -1.0 else 1.0)
            elif last:
                values.append(float(bool(task.correct(p.text(tokenizer), p.example))))
            else:
                values.append(None)
                open_prefixes.append(Partial(p.example, p.prompt_ids, p.steps, False))
                where.append((i, h))
        per_row.append(values)
    if open_prefixes:
        if sampler is None:
            raise ValueError("step_labels: labels='mc' needs a sampler")
        from entropo.algorithms.pav import mc_prover_values

        qs = mc_prover_values(open_prefixes, sampler.complete,
                              lambda c: bool(task.correct(c.text(tokenizer), c.example)), n_mc, 1)
        for (i, h), q in zip(where, qs):
            per_row[i][h] = q
    for resp, values in zip(responses, per_row):
        ends, n = [], len(resp.prompt_ids)
        for s in resp.steps:
            n += len(s.ids)
            ends.append(n - 1)
        if ends:
            rows.append((resp.ids, ends, [float(v) for v in values]))
    return rows


def fit_prm(model: PRM, rows: list[tuple[list[int], list[int], list[float]]], *, steps: int = 200,
            batch_size: int = 32, lr: float = 1e-3, seed: int = 0) -> dict[str, float]:
    """AdamW on the binary cross-entropy of the value at every step end against its (soft) label."""
    if not rows:
        raise ValueError("fit_prm: no labelled rows")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    t0, loss_value = time.perf_counter(), float("nan")
    for _ in range(steps):
        idx = torch.randint(len(rows), (min(batch_size, len(rows)),), generator=gen).tolist()
        seqs = [rows[i][0] for i in idx]
        ids, mask = model._pad(seqs)
        logits = model(ids, mask)
        width = ids.shape[1]
        r_idx, c_idx, target = [], [], []
        for r, i in enumerate(idx):
            s, ends, labs = rows[i]
            r_idx += [r] * len(ends)
            c_idx += [width - len(s) + e for e in ends]
            target += labs
        picked = logits[torch.tensor(r_idx), torch.tensor(c_idx)]
        loss = nn.functional.binary_cross_entropy_with_logits(picked, torch.tensor(target, device=picked.device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_value = float(loss.detach())
    model.eval()
    return {"loss": loss_value, "time": time.perf_counter() - t0}


def label_loss(model: PRM, rows: list[tuple[list[int], list[int], list[float]]]) -> dict[str, float]:
    """Mean BCE and 0.5-threshold agreement of the PRM's step values with (rounded) labels, over all steps."""
    preds = model.predict([r[0] for r in rows], [r[1] for r in rows])
    bce, agree, n = 0.0, 0, 0
    for p_row, (_, _, labs) in zip(preds, rows):
        for p, y in zip(p_row, labs):
            p = min(max(p, 1e-6), 1 - 1e-6)
            bce -= y * math.log(p) + (1 - y) * math.log(1 - p)
            agree += int((p >= 0.5) == (y >= 0.5))
            n += 1
    return {"bce": bce / max(1, n), "agreement": agree / max(1, n), "steps": n}


# ---- the search scorer ---------------------------------------------------------------------------------------------
class PRMScorer:
    """``StepScorer``: the PRM's value at the partial's last token (``reduce="last"``) or the minimum over its step
    ends (``reduce="min"``); an empty partial gets the value at the prompt's last token."""

    name = "prm"

    def __init__(self, model: PRM, reduce: str = "last"):
        if reduce not in ("last", "min"):
            raise ValueError(f"prm scorer: reduce must be 'last' or 'min', got {reduce!r}")
        self.model, self.reduce = model, reduce

    def score(self, partials: list[Partial]) -> list[float]:
        if not partials:
            return []
        seqs, positions = [], []
        for p in partials:
            ends, n = [], len(p.prompt_ids)
            for s in p.steps:
                n += len(s.ids)
                ends.append(n - 1)
            seqs.append(p.ids)
            positions.append((ends if self.reduce == "min" else ends[-1:]) or [len(p.prompt_ids) - 1])
        return [min(v) for v in self.model.predict(seqs, positions)]


def prm_scorer(*, task: Any = None, tokenizer: Any = None, sampler: Any = None, path: str | None = None,
               reduce: str = "last", model: PRM | None = None) -> PRMScorer:
    """Factory for ``make_scorer("entropo.search.prm:prm_scorer", ..., path=<folder>)``."""
    if model is None:
        if not path:
            raise ValueError("prm scorer needs path=<folder written by `entropo run prm_train`>")
        model = load_prm(path)
    return PRMScorer(model, reduce)


# ---- the program -----------------------------------------------------------------------------------------------------
def sample_responses(engine: Any, examples: list, n: int, seed: int, sampler_params: dict) -> list[Partial]:
    from entropo.search.runner import make_sampler

    sampler = make_sampler(engine, seed, **sampler_params)
    roots = [root(ex, engine.encode_prompt(ex.prompt)) for ex in examples]
    return [c for kids in sampler.complete(roots, n) for c in kids]


def train_prm(engine: Any, task: Any, *, prompts: int = 64, samples: int = 2, labels: str = "mc", n_mc: int = 4,
              steps: int = 200, lr: float = 1e-3, init: str = "policy", seed: int = 0, sampler_params: dict | None = None,
              console: Callable[[str], None] = print) -> tuple[PRM, dict[str, Any]]:
    """Label ``samples`` policy responses for each of ``prompts`` training prompts, fit a PRM (``init="policy"``:
    backbone from the policy, ``"scratch"``: random), and measure it on fresh training prompts' labels."""
    from entropo.search.runner import make_sampler
    from entropo.tasks.base import stable_seed

    if init not in ("policy", "scratch"):
        raise ValueError(f"train_prm: init must be 'policy' or 'scratch', got {init!r}")
    sp = dict(sampler_params or {})
    examples = [task.train_example(j) for j in range(prompts)]
    held = [task.train_example(task.train_size() - 1 - j) for j in range(max(8, prompts // 4))]
    t0 = time.perf_counter()
    label_sampler = make_sampler(engine, stable_seed(seed, "prm-labels"), **sp)
    rows = step_labels(sample_responses(engine, examples, samples, stable_seed(seed, "prm-sample"), sp), task,
                       engine.tokenizer, labels=labels, sampler=label_sampler, n_mc=n_mc)
    test = step_labels(sample_responses(engine, held, samples, stable_seed(seed, "prm-sample-held"), sp), task,
                       engine.tokenizer, labels=labels, sampler=label_sampler, n_mc=n_mc)
    console(f"  prm: {sum(len(r[1]) for r in rows)} labelled steps ({labels}) in {time.perf_counter() - t0:.1f}s, "
            f"{label_sampler.tokens} label-rollout tokens")
    torch.manual_seed(stable_seed(seed, "prm-init") % (2 ** 31))
    if init == "policy":
        model = PRM.from_policy(engine.model)
    else:
        cfg = engine.model.config
        model = PRM(cfg.vocab_size, pad_token_id=int(cfg.pad_token_id or 0))
    before = label_loss(model, test)
    fit = fit_prm(model, rows, steps=steps, lr=lr, seed=stable_seed(seed, "prm-fit"))
    after = label_loss(model, test)
    console(f"  prm: fit loss {fit['loss']:.3f}; held-prompt label BCE {before['bce']:.3f} -> {after['bce']:.3f}, "
            f"agreement {after['agreement']:.3f}")
    label_mean = sum(v for r in rows for v in r[2]) / max(1, sum(len(r[2]) for r in rows))
    return model, {"labelled_steps": sum(len(r[1]) for r in rows), "label_mean": label_mean,
                   "label_tokens": label_sampler.tokens, "fit_loss": fit["loss"], "fit_seconds": fit["time"],
                   "held_before": before, "held_after": after}


@register("program", "prm_train", paper="PAV, Rewarding Progress (Setlur et al.), arXiv 2410.08146")
def prm_train_program(out_dir: Path, seed: int, console: Callable[[str], None], recipe: str = "search_tiny",
                      prompts: int = 64, samples: int = 2, labels: str = "mc", n_mc: int = 4, steps: int = 200,
                      lr: float = 1e-3, init: str = "policy", max_tokens: int = 40) -> dict[str, Any]:
    """``entropo run prm_train``: warm up ``recipe``'s policy, label its responses, fit a PRM, save it to
    ``OUT/prm`` (``config.json`` + ``model.safetensors``; score with ``--scorer entropo.search.prm:prm_scorer``,
    ``path=OUT/prm``)."""
    from entropo.search.runner import load_target

    engine, task = load_target(recipe, task=None, task_params=None, eval_size=8, overrides=[f"seed={seed}"],
                               seed=seed, console=console)
    model, info = train_prm(engine, task, prompts=prompts, samples=samples, labels=labels, n_mc=n_mc, steps=steps,
                            lr=lr, init=init, seed=seed, sampler_params={"max_tokens": max_tokens}, console=console)
    where = model.save(Path(out_dir) / "prm")
    (Path(out_dir) / "prm_train.json").write_text(json.dumps(info, indent=1))
    return {**info, "path": str(where)}


__all__ = ["PRM", "PRMScorer", "fit_prm", "label_loss", "load_prm", "prm_scorer", "step_labels",
           "step_prefixes", "train_prm"]
