"""AlphaOPT: a programmer that turns optimization word problems into solver models improves without weight updates,
by growing a library of solver-verified insights and refining when each one applies.

Paper: "AlphaOPT: Formulating Optimization Programs with Self-Improving LLM Experience Library", arXiv 2510.18428.
Played here on ``entropo.tasks.lp_word_problems`` (templated LP word problems, answers checked with HiGHS).

What the official code does (Minw913/AlphaOPT ``src/``), and what is kept:

- an insight is {taxonomy, condition, explanation, example} plus bookkeeping (id, task id, iteration, version,
  occurrence, distribution {positive, negative, unretrieved, ...}) (``experience_library.Insight``); kept: the same
  fields, plus ``fix``, the handle the scripted programmer acts on (a language-model programmer reads the
  explanation and example instead);
- retrieval is two-stage (``llm_retriever``): a quick match of the task against the taxonomy's labels, then a full
  check of each matched insight's applicability condition; kept, with both stages rule-based: the task's domain label
  (from keywords) against the insight's "Domain Modeling" labels, then the condition (a domain and phrases that must
  occur in the text);
- learning (``train_eval_utils.self_verify_test``): on a failed task the extractor proposes insights and they are
  kept only if re-solving the task with them (plus the insights already retrieved) reaches the optimum; kept, and in
  addition a proposal whose removal still leaves the re-solve correct is dropped (the official code keeps the set);
- evolution (``library_refinement.py``): per insight, the tasks where it was retrieved and the answer was right
  (positive), retrieved and harmful (negative), not retrieved though it would have fixed the task (unretrieved);
  candidate conditions are scored by (positive retrieved + unretrieved retrieved + negative not retrieved) / total and
  the best replaces the condition when it beats the current one (positive / total); kept, with candidate conditions
  enumerated from the cue phrases the extractor knows (the official code asks an LLM for K rewritten conditions);
- answers compared with an absolute tolerance of 0.1 in the official config; 5e-3 relative here.

Reduced: the programmer is pluggable. ``scripted_programmer`` STANDS IN FOR AN LLM: it reads each problem's structured
clauses and makes systematic, wording-triggered modelling errors (reads "a minimum of" as an upper bound, ignores
"whole" units, drops a "combined" capacity stated as an afterthought, writes a "percent of the blend" requirement as
an absolute amount, declares shipments free of sign) unless a retrieved insight's fix tells it otherwise, plus an
unfixable transcription slip on ~10 % of problems. ``LMProgrammer`` prompts any entropo model with the text and the
retrieved insights and parses the LP it writes. The extractor is scripted too (it proposes an insight for every cue it
finds in a failed problem, and writes the integrality insight's condition at the level of the problem's domain, an
over-general condition that evolution has to narrow). No LLM in the loop learns anything here.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from entropo.registry import register
from entropo.tasks.base import stable_seed
from entropo.tasks.lp_word_problems import (FORMAT, LP, Constraint, Problem, is_correct, parse_lp, ratio_constraint,
                                            solve)

DOMAINS = {"production": "Production Planning", "diet": "Diet", "transport": "Transportation",
           "blending": "Blending"}
DOMAIN_KEYWORDS = (("blending", "blend"), ("transport", "ship"), ("diet", "serving"), ("production", "profit"))


def detect_domain(text: str) -> str | None:
    """The quick taxonomy match: the task's domain from keywords of its text."""
    low = text.lower()
    return next((d for d, kw in DOMAIN_KEYWORDS if kw in low), None)


# ---- insights and the library -------------------------------------------------------------------------------------

@dataclass
class Insight:
    """{taxonomy, condition, explanation, example} (+ ``fix``, the scripted programmer's handle) and bookkeeping.
    ``condition``: {"domain": one of DOMAINS or None (any), "phrases": phrases that must all occur in the text}."""

    taxonomy: dict[str, dict[str, list[str]]]
    condition: dict[str, Any]
    explanation: str
    example: str
    fix: str
    insight_id: int = -1
    task_id: str = ""
    iteration: int = 0
    version: int = 1
    occurrence: int = 0
    distribution: dict[str, list[str]] = field(default_factory=lambda: {"positive": [], "negative": [],
                                                                         "unretrieved": []})

    def applies(self, text: str) -> bool:
        """The full applicability check of the condition."""
        low = text.lower()
        dom = self.condition.get("domain")
        return (dom is None or detect_domain(text) == dom) and all(p in low for p in self.condition.get("phrases", []))

    def condition_text(self) -> str:
        dom = self.condition.get("domain")
        where = f"in {DOMAINS[dom].lower()} problems" if dom else "in any problem"
        phrases = self.condition.get("phrases", [])
        return where + (" whose text says " + " and ".join(f"'{p}'" for p in phrases) if phrases else "")

    def same_rule(self, other: Insight) -> bool:
        return self.fix == other.fix and _cond_key(self.condition) == _cond_key(other.condition)


def _cond_key(cond: dict[str, Any]) -> tuple:
    return cond.get("domain"), tuple(sorted(cond.get("phrases", [])))


class ExperienceLibrary:
    """The insight list with two-stage retrieval and JSON serialization (written atomically)."""

    def __init__(self, insights: Sequence[Insight] = ()):
        self.insights: list[Insight] = list(insights)

    def __len__(self) -> int:
        return len(self.insights)

    def add(self, insight: Insight) -> Insight:
        insight.insight_id = max((i.insight_id for i in self.insights), default=0) + 1
        self.insights.append(insight)
        return insight

    def has_rule(self, insight: Insight) -> bool:
        return any(i.same_rule(insight) for i in self.insights)

    def retrieve(self, text: str) -> list[Insight]:
        """Stage 1: insights whose "Domain Modeling" labels include the task's domain, or that have none; stage 2:
        those whose condition holds for the text."""
        label = DOMAINS.get(detect_domain(text) or "")
        matched = [i for i in self.insights if not i.taxonomy.get("Domain Modeling")
                   or label in i.taxonomy["Domain Modeling"]]
        return [i for i in matched if i.applies(text)]

    def to_json(self) -> list[dict[str, Any]]:
        return [asdict(i) for i in self.insights]

    @classmethod
    def from_json(cls, data: list[dict[str, Any]]) -> ExperienceLibrary:
        return cls([Insight(**d) for d in data])

    def save(self, path: str | os.PathLike) -> Path:
        """Write the library as JSON atomically (temp file in the same folder, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self.to_json(), f, indent=2)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> ExperienceLibrary:
        with open(path) as f:
            data = json.load(f)
        if not isinstance(data, list):
            raise ValueError(f"{path}: an experience library is a JSON list of insights")
        return cls.from_json(data)


# ---- programmers ---------------------------------------------------------------------------------------------------

Programmer = Callable[[Problem, Sequence[Insight]], "LP | str"]  # an LP, or text in lp_word_problems.FORMAT


def scripted_programmer(problem: Problem, insights: Sequence[Insight], slip_rate: float = 0.1) -> LP:
    """A rule-based modeller with systematic, wording-triggered errors that retrieved insights' fixes correct (see
    the module docstring). It reads the problem's structured clauses: it stands in for an LLM reading the text."""
    fixes = {i.fix for i in insights}
    obj = problem.clauses[0].data
    coeffs = dict(obj["coeffs"])
    if stable_seed("slip", problem.pid) % 1000 < slip_rate * 1000:  # a transcription slip no insight fixes
        first = next(iter(coeffs))
        coeffs[first] *= 10
    lp = LP(obj["sense"], coeffs)
    for c in problem.clauses[1:]:
        d = c.data
        if c.kind in ("limit", "minimum"):
            op = d["op"]
            if d.get("phrase") == "a minimum of" and "min_phrase_sense" not in fixes:
                op = "<="  # reads "a minimum of" as a cap
            lp.constraints.append(Constraint(dict(d["coeffs"]), op, d["rhs"]))
        elif c.kind == "combined" and "combined_cap" in fixes:
            lp.constraints.append(Constraint(dict(d["coeffs"]), d["op"], d["rhs"]))
        elif c.kind == "ratio":
            lp.constraints.append(ratio_constraint(d) if "ratio" in fixes
                                  else Constraint(dict(d["coeffs"]), d["op"], d["level"]))  # absolute, not a share
    if "integrality" in fixes:
        lp.integer |= set(problem.variables)
    if problem.template == "transport" and "nonneg" not in fixes:
        lp.free |= set(problem.variables)  # shipments declared free of sign
    return lp


SYSTEM = "You are an expert in optimization modelling. You write linear programs for word problems."


def lm_prompt(problem: Problem, insights: Sequence[Insight]) -> list[dict[str, str]]:
    """The chat prompt of the language-model programmer: problem, retrieved insights, output format."""
    text = f"Problem: {problem.text}\n\n"
    if insights:
        text += "Lessons from earlier problems (apply them if relevant):\n" + "\n".join(
            f"- {i.explanation} Example: {i.example}" for i in insights) + "\n\n"
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text + FORMAT}]


class LMProgrammer:
    """Prompts an entropo model (``entropo.models.load``: an alias such as ``smollm2-135m-instruct``, a folder, or
    ``tiny``) greedily with ``lm_prompt`` and returns its text; ``check`` parses and solves it."""

    def __init__(self, model: str = "smollm2-135m-instruct", max_new_tokens: int = 160):
        import torch

        from entropo.models import load

        self.model, self.tokenizer = load(model)
        self.model.eval()
        self.max_new_tokens, self._torch = max_new_tokens, torch

    def __call__(self, problem: Problem, insights: Sequence[Insight]) -> str:
        tok = self.tokenizer
        msgs = lm_prompt(problem, insights)
        if getattr(tok, "chat_template", None):
            ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt")
            if not isinstance(ids, self._torch.Tensor):  # newer transformers return a BatchEncoding
                ids = ids["input_ids"]
        else:
            ids = tok("\n\n".join(m["content"] for m in msgs) + "\n", return_tensors="pt")["input_ids"]
        with self._torch.no_grad():
            out = self.model.generate(ids, attention_mask=self._torch.ones_like(ids), do_sample=False,
                                      max_new_tokens=self.max_new_tokens,
                                      pad_token_id=tok.pad_token_id if tok.pad_token_id is not None
                                      else tok.eos_token_id)
        return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def check(output: LP | str, problem: Problem) -> bool:
    """Solve what a programmer wrote (an LP, or text in FORMAT) and compare with the answer (5e-3 relative)."""
    if isinstance(output, str):
        try:
            output = parse_lp(output)
        except ValueError:
            return False
    sol = solve(output)
    return sol.status == "optimal" and is_correct(sol.objective, problem.answer)


def attempt(problem: Problem, programmer: Programmer, insights: Sequence[Insight]) -> bool:
    return check(programmer(problem, list(insights)), problem)


# ---- the extractor -------------------------------------------------------------------------------------------------

GF, DM = "General Formulation", "Domain Modeling"
CATALOGUE = {  # fix: (cue phrase or None, taxonomy, explanation, example)
    "min_phrase_sense": ("a minimum of", {GF: {"Constraint Formulation": ["Incorrect Relational Operators"]}},
                         "'A minimum of N' is a lower bound: write the constraint with >=, not <=.",
                         "'a minimum of 5 desks' -> desks >= 5"),
    "integrality": ("whole", {GF: {"Variable Definition": ["Continuous vs. Discrete Confusion"]}},
                    "Quantities counted in whole units must be integer variables.",
                    "'only whole units can be sold' -> integer: chairs, tables"),
    "combined_cap": ("combined", {GF: {"Constraint Formulation": ["Missing Constraints"]}},
                     "A limit on the combined amount of all items is one more constraint on their sum.",
                     "'the combined output cannot exceed 40' -> chairs + tables + desks <= 40"),
    "ratio": ("percent of the blend", {DM: {"Blending": ["Ratio Constraints"]},
                                       GF: {"Constraint Formulation": ["Nonlinear Ratio Linearization"]}},
              "A share of the blend is relative to the blend's total: sum(q_i x_i) >= L * sum(x_i), i.e. "
              "sum((q_i - L) x_i) >= 0.", "'at least 30 percent protein' -> (5-30) soy + (17-30) corn >= 0"),
    "nonneg": (None, {DM: {"Transportation": ["Shipment Variables"]},
                      GF: {"Variable Definition": ["Missing Bounds"]}},
               "Shipped amounts cannot be negative: every shipment variable is >= 0.",
               "ship_a_to_1 >= 0 (do not declare shipments free)"),
}
CUE_PHRASES = tuple(c[0] for c in CATALOGUE.values() if c[0])


def scripted_extractor(problem: Problem, library: ExperienceLibrary, iteration: int = 0) -> list[Insight]:
    """Propose an insight for every cue of the catalogue found in a failed problem (not already a library rule).
    The integrality condition is written at the domain level (over-general on purpose, see the module docstring);
    the shipment-sign insight applies to the transportation domain; the others to their cue phrase anywhere."""
    low, domain = problem.text.lower(), detect_domain(problem.text)
    out = []
    for fix, (cue, taxonomy, explanation, example) in CATALOGUE.items():
        if fix == "nonneg":
            if domain != "transport":
                continue
            cond = {"domain": "transport", "phrases": []}
        elif cue not in low:
            continue
        elif fix == "integrality":
            cond = {"domain": domain, "phrases": []}
        else:
            cond = {"domain": None, "phrases": [cue]}
        tax = {k: {a: list(b) for a, b in v.items()} for k, v in taxonomy.items()}
        if fix == "integrality" and domain:
            tax[DM] = {DOMAINS[domain]: ["Discrete Quantities"]}
        ins = Insight(tax, cond, explanation, example, fix, task_id=problem.pid, iteration=iteration)
        if not library.has_rule(ins):
            out.append(ins)
    return out


# ---- learning and evolution ----------------------------------------------------------------------------------------

@dataclass
class LearnLog:
    """Per iteration: train accuracy before learning, insights proposed / kept / rejected, conditions refined."""

    rows: list[dict[str, Any]] = field(default_factory=list)


def learn_from_failure(problem: Problem, library: ExperienceLibrary, programmer: Programmer,
                       extractor: Callable[..., list[Insight]], iteration: int = 0) -> tuple[list[Insight], int]:
    """Propose insights for a failed problem; keep them only if re-solving with them (and the retrieved ones)
    succeeds, minus any whose removal keeps it solved. Returns (kept, number rejected)."""
    retrieved = library.retrieve(problem.text)
    proposals = extractor(problem, library, iteration)
    if not proposals:
        return [], 0
    if not attempt(problem, programmer, retrieved + proposals):
        return [], len(proposals)
    keep = list(proposals)
    for ins in list(keep):
        rest = [k for k in keep if k is not ins]
        if attempt(problem, programmer, retrieved + rest):
            keep = rest
    for ins in keep:
        library.add(ins)
    return keep, len(proposals) - len(keep)


def insight_distribution(library: ExperienceLibrary, problems: Sequence[Problem],
                         programmer: Programmer) -> dict[int, dict[str, list[str]]]:
    """Per insight id: positive / negative / unretrieved task ids (as the official library diagnosis)."""
    dist = {i.insight_id: {"positive": [], "negative": [], "unretrieved": []} for i in library.insights}
    for p in problems:
        retrieved = library.retrieve(p.text)
        if attempt(p, programmer, retrieved):
            for i in retrieved:
                dist[i.insight_id]["positive"].append(p.pid)
            continue
        for i in retrieved:
            if attempt(p, programmer, [r for r in retrieved if r is not i]):
                dist[i.insight_id]["negative"].append(p.pid)
        for i in library.insights:
            if i not in retrieved and attempt(p, programmer, retrieved + [i]):
                dist[i.insight_id]["unretrieved"].append(p.pid)
    return dist


def condition_score(insight: Insight, condition: dict[str, Any], texts: dict[str, str],
                    dist: dict[str, list[str]]) -> float:
    """(positive retrieved + unretrieved retrieved + negative not retrieved) / total, for ``condition``."""
    probe = Insight(insight.taxonomy, condition, "", "", insight.fix)
    total = sum(len(v) for v in dist.values())
    if not total:
        return 0.0
    hit = {k: sum(probe.applies(texts[t]) for t in dist[k]) for k in dist}
    return (hit["positive"] + hit["unretrieved"] + len(dist["negative"]) - hit["negative"]) / total


def candidate_conditions(insight: Insight) -> list[dict[str, Any]]:
    """Rewrites of an insight's condition: its domain or any, with its phrases, none, or one cue phrase."""
    dom = insight.condition.get("domain")
    phrase_sets = [list(insight.condition.get("phrases", [])), []] + [[p] for p in CUE_PHRASES]
    out, seen = [], set()
    for d in dict.fromkeys([dom, None]):
        for ph in phrase_sets:
            key = _cond_key({"domain": d, "phrases": ph})
            if key not in seen:
                seen.add(key)
                out.append({"domain": d, "phrases": ph})
    return out


def evolve_library(library: ExperienceLibrary, problems: Sequence[Problem], programmer: Programmer) -> int:
    """One evolution pass: diagnose, rewrite the conditions of insights with negative or unretrieved tasks when a
    candidate scores better, then merge insights that became the same rule. Returns the number rewritten."""
    dist = insight_distribution(library, problems, programmer)
    texts = {p.pid: p.text for p in problems}
    changed = 0
    for ins in library.insights:
        d = dist[ins.insight_id]
        ins.distribution = d
        if not d["negative"] and not d["unretrieved"]:
            continue
        total = sum(len(v) for v in d.values())
        best, best_score = None, len(d["positive"]) / total
        for cond in candidate_conditions(ins):
            s = condition_score(ins, cond, texts, d)
            if s > best_score + 1e-12:
                best, best_score = cond, s
        if best is not None:
            ins.condition, ins.version = best, ins.version + 1
            if best.get("domain") is None:  # no longer domain-specific: drop the domain label from its taxonomy
                ins.taxonomy = {k: v for k, v in ins.taxonomy.items() if k != DM or ins.fix in ("ratio", "nonneg")}
            changed += 1
    merged: list[Insight] = []
    for ins in library.insights:
        twin = next((m for m in merged if m.same_rule(ins)), None)
        if twin is None:
            merged.append(ins)
        else:
            twin.task_id = ",".join(dict.fromkeys(twin.task_id.split(",") + ins.task_id.split(",")))
    library.insights = merged
    return changed


def learn_library(train: Sequence[Problem], programmer: Programmer = scripted_programmer,
                  extractor: Callable[..., list[Insight]] = scripted_extractor, iterations: int = 2,
                  evolve: bool = True, library: ExperienceLibrary | None = None) -> tuple[ExperienceLibrary, LearnLog]:
    """Library learning over the training problems for ``iterations`` passes (each followed by an evolution pass
    when ``evolve``)."""
    library = library if library is not None else ExperienceLibrary()
    log = LearnLog()
    for it in range(iterations):
        solved = proposed_kept = rejected = 0
        for p in train:
            retrieved = library.retrieve(p.text)
            for i in retrieved:
                i.occurrence += 1
            if attempt(p, programmer, retrieved):
                solved += 1
                continue
            kept, rej = learn_from_failure(p, library, programmer, extractor, it)
            proposed_kept += len(kept)
            rejected += rej
        refined = evolve_library(library, train, programmer) if evolve else 0
        log.rows.append({"iteration": it, "train_accuracy_before": solved / max(1, len(train)),
                         "kept": proposed_kept, "rejected": rejected, "refined": refined, "size": len(library)})
    return library, log


def accuracy(problems: Sequence[Problem], programmer: Programmer,
             library: ExperienceLibrary | None = None) -> tuple[float, dict[str, float]]:
    """Accuracy (and per template) of ``programmer`` with insights retrieved from ``library`` (none when None)."""
    per: dict[str, list[bool]] = {}
    for p in problems:
        ins = library.retrieve(p.text) if library is not None else []
        per.setdefault(p.template, []).append(attempt(p, programmer, ins))
    allv = [v for vs in per.values() for v in vs]
    return sum(allv) / max(1, len(allv)), {k: sum(v) / len(v) for k, v in per.items()}


# ---- the program recipe (entropo run alphaopt) ---------------------------------------------------------------------

def balanced(problems: Sequence[Problem], n: int) -> list[Problem]:
    """The first ``n`` problems taken round-robin over templates."""
    by: dict[str, list[Problem]] = {}
    for p in problems:
        by.setdefault(p.template, []).append(p)
    out, i = [], 0
    while len(out) < min(n, len(problems)):
        for t in by:
            if i < len(by[t]) and len(out) < n:
                out.append(by[t][i])
        i += 1
    return out


@register("program", "alphaopt", paper="AlphaOPT, arXiv 2510.18428")
def alphaopt_program(out_dir, seed: int, console, train_per_template: int = 20, heldout_per_template: int = 20,
                     iterations: int = 2, slip_rate: float = 0.1, lm_model: str = "", lm_problems: int = 0,
                     max_new_tokens: int = 128) -> dict:
    """Held-out accuracy of the scripted programmer without a library, with a library learned without evolution,
    and with evolution; optionally (``lm_model``) of a language-model programmer on ``lm_problems`` held-out problems
    without and with the evolved library. Writes OUT/library.json (the evolved library)."""
    from pathlib import Path

    from entropo.tasks.lp_word_problems import problems as make_problems

    out_dir = Path(out_dir)
    train = make_problems("train", train_per_template, seed)
    held = make_problems("heldout", heldout_per_template, seed)

    def prog(p, ins):
        return scripted_programmer(p, ins, slip_rate)

    res: dict[str, Any] = {"n_train": len(train), "n_heldout": len(held)}
    acc, per = accuracy(held, prog)
    res.update({"scripted/no_library": acc, "per_template/no_library": per})
    for name, evolve in (("library", False), ("library_evolved", True)):
        lib, log = learn_library(train, prog, iterations=iterations, evolve=evolve)
        acc, per = accuracy(held, prog, lib)
        res.update({f"scripted/{name}": acc, f"per_template/{name}": per, f"log/{name}": log.rows,
                    f"size/{name}": len(lib)})
        console(f"  {name}: {len(lib)} insights, held-out accuracy {acc:.3f} ({per})")
    lib.save(out_dir / "library.json")
    res["insights"] = [{"id": i.insight_id, "fix": i.fix, "condition": i.condition_text(), "version": i.version}
                       for i in lib.insights]
    console(f"  no library: held-out accuracy {res['scripted/no_library']:.3f}")
    if lm_model and lm_problems > 0:
        import time

        lm = LMProgrammer(lm_model, max_new_tokens)
        subset = balanced(held, lm_problems)
        rows = []
        t0 = time.perf_counter()
        for arm, library in (("no_library", None), ("library_evolved", lib)):
            ok = []
            for p in subset:
                ins = library.retrieve(p.text) if library is not None else []
                text = lm(p, ins)
                ok.append(check(text, p))
                rows.append({"arm": arm, "pid": p.pid, "answer": p.answer, "correct": ok[-1],
                             "insights": [i.insight_id for i in ins], "output": text})
            res[f"lm/{arm}"] = sum(ok) / len(ok)
            console(f"  {lm_model} {arm}: {sum(ok)}/{len(ok)} held-out problems")
        res["lm/model"], res["lm/problems"], res["lm/wall_s"] = lm_model, len(subset), time.perf_counter() - t0
        res["lm/parsed"] = sum(_parses(r["output"]) for r in rows) / len(rows)
        (out_dir / "lm_outputs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return res


def _parses(text: str) -> bool:
    try:
        parse_lp(text)
        return True
    except ValueError:
        return False
