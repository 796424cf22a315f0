"""``lp_word_problems``: templated linear-program word problems with a solver-checked answer (registry kind
``task``), the toy stand-in for the optimization-modelling benchmarks of "AlphaOPT: Formulating Optimization Programs
with Self-Improving LLM Experience Library" (arXiv 2510.18428).

Four templates (production planning, diet, transportation, blending), each in three surface variants (names, units,
sentence wording); variants 0 and 1 are the training split, variant 2 is held out. Numbers are seeded per problem.
Every problem is a list of clauses: one sentence of text each plus its structured reading (what a correct modeller
writes for it). The answer is the optimal objective of the correct LP, solved by HiGHS (``scipy.optimize.linprog``,
method "highs", with integrality when a clause asks for whole units); an answer is right within a relative
tolerance of 5e-3 (the official code compares with an absolute tolerance of 0.1).

Some clauses carry wording that a modeller can get wrong (the systematic errors ``entropo.algorithms.alphaopt``'s
scripted programmer makes): "a minimum of" (a lower bound), "whole" units (integrality), a "combined" capacity stated
as an afterthought, "percent of the blend" (a ratio constraint that must be linearized), and shipments (variables that
must be non-negative).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from entropo.registry import register
from entropo.tasks.base import make_prompt, stable_seed, strict_params
from entropo.types import Example

TEMPLATES = ("production", "diet", "transport", "blending")
TRAIN_VARIANTS, HELDOUT_VARIANTS = (0, 1), (2,)
OPS = ("<=", ">=", "==")


# ---- linear programs -----------------------------------------------------------------------------------------------

@dataclass
class Constraint:
    coeffs: dict[str, float]
    op: str
    rhs: float


@dataclass
class LP:
    """sense max/min of sum(objective[v] * v) subject to constraints; lower bound 0 unless in ``free``; ``integer``
    variables are integral."""

    sense: str
    objective: dict[str, float]
    constraints: list[Constraint] = field(default_factory=list)
    integer: set[str] = field(default_factory=set)
    free: set[str] = field(default_factory=set)

    def variables(self) -> list[str]:
        names = dict.fromkeys(self.objective)
        for c in self.constraints:
            names.update(dict.fromkeys(c.coeffs))
        return list(names)


@dataclass
class Solution:
    status: str  # optimal / infeasible / unbounded / error
    objective: float | None = None
    message: str = ""


def solve(lp: LP) -> Solution:
    """Solve with HiGHS through ``scipy.optimize.linprog``; never raises for a bad model (status "error")."""
    from scipy.optimize import linprog

    if lp.sense not in ("max", "min"):
        return Solution("error", message=f"sense {lp.sense!r} is not max or min")
    names = lp.variables()
    if not names:
        return Solution("error", message="no variables")
    idx = {v: i for i, v in enumerate(names)}
    sign = -1.0 if lp.sense == "max" else 1.0
    c = np.array([sign * lp.objective.get(v, 0.0) for v in names])
    a_ub, b_ub, a_eq, b_eq = [], [], [], []
    for con in lp.constraints:
        if con.op not in OPS:
            return Solution("error", message=f"constraint operator {con.op!r} is not one of {OPS}")
        row = np.zeros(len(names))
        for v, a in con.coeffs.items():
            row[idx[v]] += a
        if con.op == "==":
            a_eq.append(row), b_eq.append(con.rhs)
        elif con.op == "<=":
            a_ub.append(row), b_ub.append(con.rhs)
        else:
            a_ub.append(-row), b_ub.append(-con.rhs)
    bounds = [(None, None) if v in lp.free else (0, None) for v in names]
    integrality = np.array([1 if v in lp.integer else 0 for v in names])
    try:
        res = linprog(c, A_ub=np.array(a_ub) if a_ub else None, b_ub=b_ub or None,
                      A_eq=np.array(a_eq) if a_eq else None, b_eq=b_eq or None, bounds=bounds,
                      integrality=integrality if integrality.any() else None, method="highs")
    except (ValueError, TypeError) as e:
        return Solution("error", message=str(e))
    if res.status == 0:
        return Solution("optimal", float(sign * res.fun))
    return Solution({2: "infeasible", 3: "unbounded"}.get(res.status, "error"), message=str(res.message))


def is_correct(value: float | None, answer: float, rel_tol: float = 5e-3) -> bool:
    return value is not None and abs(value - answer) <= rel_tol * max(1.0, abs(answer))


# ---- problems ------------------------------------------------------------------------------------------------------

@dataclass
class Clause:
    """One sentence and its structured reading. ``kind``: objective, limit (a plain constraint), minimum,
    combined, integer, ratio."""

    kind: str
    text: str
    data: dict[str, Any]


@dataclass
class Problem:
    pid: str
    template: str
    variant: int
    clauses: list[Clause]
    answer: float = float("nan")

    @property
    def text(self) -> str:
        return " ".join(c.text for c in self.clauses)

    @property
    def variables(self) -> list[str]:
        return list(self.clauses[0].data["coeffs"])


def correct_lp(problem: Problem) -> LP:
    """The LP a correct modeller writes for ``problem``."""
    obj = problem.clauses[0].data
    lp = LP(obj["sense"], dict(obj["coeffs"]))
    for c in problem.clauses[1:]:
        if c.kind in ("limit", "minimum", "combined"):
            lp.constraints.append(Constraint(dict(c.data["coeffs"]), c.data["op"], c.data["rhs"]))
        elif c.kind == "integer":
            lp.integer |= set(problem.variables)
        elif c.kind == "ratio":
            lp.constraints.append(ratio_constraint(c.data))
    return lp


def ratio_constraint(data: dict[str, Any]) -> Constraint:
    """sum(q_i x_i) op L/100 * sum(x_i), linearized: sum((q_i - L) x_i) op 0 (q and L in percent)."""
    return Constraint({v: q - data["level"] for v, q in data["coeffs"].items()}, data["op"], 0.0)


def _fmt(x: float) -> str:
    return f"{x:g}"


NAMES = {
    "production": [(("chairs", "tables", "desks"), ("carpentry hours", "finishing hours", "wood (board feet)")),
                   (("widgets", "gadgets", "gizmos"), ("machine hours", "labour hours", "steel (kg)")),
                   (("loaves of bread", "cakes", "pies"), ("oven hours", "flour (kg)", "sugar (kg)"))],
    "diet": [(("oats", "milk", "eggs"), ("protein (g)", "calcium (mg)", "iron (mg)")),
             (("rice", "beans", "spinach"), ("protein (g)", "fibre (g)", "vitamin C (mg)")),
             (("bread", "cheese", "apples"), ("energy (kcal)", "protein (g)", "potassium (mg)"))],
    "transport": [(("Plant A", "Plant B"), ("Store 1", "Store 2", "Store 3"), "tons of cement"),
                  (("the north mill", "the south mill"), ("Bakery X", "Bakery Y", "Bakery Z"), "sacks of flour"),
                  (("Depot East", "Depot West"), ("Clinic 1", "Clinic 2", "Clinic 3"), "crates of supplies")],
    "blending": [(("soy meal", "corn", "fish meal"), "animal feed", "protein"),
                 (("ore A", "ore B", "ore C"), "alloy", "nickel"),
                 (("grape juice", "apple juice", "pear juice"), "juice blend", "sugar")],
}


def _var(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _production(rng: np.random.Generator, v: int, flags: dict[str, bool]) -> list[Clause]:
    products, resources = NAMES["production"][v]
    n = 3
    xs = [_var(p) for p in products[:n]]
    profit = rng.integers(3, 15, size=n).astype(float)
    use = rng.integers(1, 6, size=(3, n)).astype(float)
    cap = rng.integers(40, 120, size=3).astype(float) + 0.5
    opener = ("A workshop makes {p}." if v != 1 else "A factory can produce {p}.").format(p=", ".join(products[:n]))
    clauses = [Clause("objective", opener + " Profit per unit is " + ", ".join(
        f"${_fmt(profit[i])} for {products[i]}" for i in range(n)) + "; maximize total profit.",
                      {"sense": "max", "coeffs": dict(zip(xs, profit))})]
    for r in range(3):
        text = (f"Each unit uses " + ", ".join(f"{_fmt(use[r, i])} {resources[r]} for {products[i]}" for i in range(n))
                + f"; at most {_fmt(cap[r])} {resources[r]} are available.")
        clauses.append(Clause("limit", text, {"coeffs": dict(zip(xs, use[r])), "op": "<=", "rhs": cap[r]}))
    if flags["minimum"]:
        j = int(np.argmin(profit / use.sum(0)))
        d = float(np.floor(0.3 * np.min(cap / use[:, j])) + 0.5)
        phrase = "a minimum of" if flags["tricky"] else "at least"
        clauses.append(Clause("minimum", f"A contract requires {phrase} {_fmt(d)} {products[j]} to be made.",
                              {"coeffs": {xs[j]: 1.0}, "op": ">=", "rhs": d, "phrase": phrase}))
    if flags["combined"]:
        clauses.append(Clause("combined", "In addition, the combined output of all products cannot exceed "
                                          f"{{cap}} units.", {"coeffs": {x: 1.0 for x in xs}, "op": "<=", "rhs": None}))
    if flags["integer"]:
        clauses.append(Clause("integer", "Only whole units can be sold.", {}))
    return clauses


def _diet(rng: np.random.Generator, v: int, flags: dict[str, bool]) -> list[Clause]:
    foods, nutrients = NAMES["diet"][v]
    xs = [_var(f) for f in foods]
    cost = np.round(rng.uniform(0.5, 4.0, size=3), 2)
    content = rng.integers(1, 12, size=(3, 3)).astype(float)
    need = rng.integers(20, 60, size=3).astype(float) + 0.5
    clauses = [Clause("objective", "A dietitian plans daily servings of " + ", ".join(foods) + ", costing " + ", ".join(
        f"${_fmt(cost[i])} per serving of {foods[i]}" for i in range(3)) + "; minimize the daily cost.",
                      {"sense": "min", "coeffs": dict(zip(xs, cost))})]
    for k in range(3):
        tricky = flags["tricky"] and k == 0
        phrase = "a minimum of" if tricky else "at least"
        text = ("One serving provides " + ", ".join(f"{_fmt(content[k, i])} {nutrients[k]} from {foods[i]}"
                                                    for i in range(3)) + f"; the diet needs {phrase} {_fmt(need[k])}"
                f" {nutrients[k]}.")
        clauses.append(Clause("minimum" if tricky else "limit", text,
                              {"coeffs": dict(zip(xs, content[k])), "op": ">=", "rhs": need[k], "phrase": phrase}))
    if flags["combined"]:
        clauses.append(Clause("combined", "In addition, the combined number of servings cannot exceed {cap}.",
                              {"coeffs": {x: 1.0 for x in xs}, "op": "<=", "rhs": None}))
    if flags["integer"]:
        clauses.append(Clause("integer", "Servings must be whole servings.", {}))
    return clauses


def _transport(rng: np.random.Generator, v: int, flags: dict[str, bool]) -> list[Clause]:
    sources, sinks, goods = NAMES["transport"][v]
    xs = {(i, j): _var(f"ship {s} to {t}") for i, s in enumerate(sources) for j, t in enumerate(sinks)}
    cost = rng.integers(2, 12, size=(2, 3)).astype(float)
    demand = rng.integers(15, 40, size=3).astype(float) + 0.5
    supply = np.array([0.6, 0.6]) * demand.sum() + rng.integers(0, 10, size=2)
    clauses = [Clause("objective", f"A company ships {goods} from " + " and ".join(sources) + " to " + ", ".join(sinks)
                      + ". The cost per unit shipped is " + "; ".join(
                          f"{_fmt(cost[i, j])} from {sources[i]} to {sinks[j]}" for (i, j) in xs)
                      + ". Minimize the total shipping cost.",
                      {"sense": "min", "coeffs": {x: cost[i, j] for (i, j), x in xs.items()}})]
    for i, s in enumerate(sources):
        clauses.append(Clause("limit", f"{s} can ship at most {_fmt(supply[i])} {goods}.",
                              {"coeffs": {xs[i, j]: 1.0 for j in range(3)}, "op": "<=", "rhs": float(supply[i])}))
    for j, t in enumerate(sinks):
        tricky = flags["tricky"] and j == 0
        phrase = "a minimum of" if tricky else "at least"
        clauses.append(Clause("minimum" if tricky else "limit", f"{t} must receive {phrase} {_fmt(demand[j])} {goods}.",
                              {"coeffs": {xs[i, j]: 1.0 for i in range(2)}, "op": ">=", "rhs": demand[j],
                               "phrase": phrase}))
    if flags["integer"]:
        clauses.append(Clause("integer", f"The {goods} travel in whole truckloads of one unit.", {}))
    return clauses


def _blending(rng: np.random.Generator, v: int, flags: dict[str, bool]) -> list[Clause]:
    inputs, product, prop = NAMES["blending"][v]
    xs = [_var(i) for i in inputs]
    cost = rng.integers(2, 20, size=3).astype(float)
    q = np.sort(rng.choice(np.arange(5, 60, 3), size=3, replace=False).astype(float))
    total = float(rng.integers(50, 200))
    level = float(np.round(rng.uniform(q[0] + 1, q[2] - 1)))
    clauses = [Clause("objective", f"A plant mixes {', '.join(inputs)} into {_fmt(total)} tons of {product}, costing "
                      + ", ".join(f"${_fmt(cost[i])} per ton of {inputs[i]}" for i in range(3))
                      + "; minimize the cost of the blend.", {"sense": "min", "coeffs": dict(zip(xs, cost))}),
               Clause("limit", f"Exactly {_fmt(total)} tons must be produced.",
                      {"coeffs": {x: 1.0 for x in xs}, "op": "==", "rhs": total}),
               Clause("ratio", f"The {prop} content is " + ", ".join(f"{_fmt(q[i])}% in {inputs[i]}" for i in range(3))
                      + f"; at least {_fmt(level)} percent of the blend must be {prop}.",
                      {"coeffs": dict(zip(xs, q)), "op": ">=", "level": level})]
    if flags["minimum"] or flags["tricky"]:
        phrase = "a minimum of" if flags["tricky"] else "at least"
        m = float(np.round(0.2 * total))
        j = int(np.argmax(cost))
        clauses.append(Clause("minimum" if flags["tricky"] else "limit",
                              f"Supply contracts require {phrase} {_fmt(m)} tons of {inputs[j]} in the mix.",
                              {"coeffs": {xs[j]: 1.0}, "op": ">=", "rhs": m, "phrase": phrase}))
    if flags["integer"]:
        clauses.append(Clause("integer", "Inputs are bought in whole tons.", {}))
    return clauses


BUILDERS = {"production": _production, "diet": _diet, "transport": _transport, "blending": _blending}


def make_problem(template: str, variant: int, index: int, seed: int = 0) -> Problem:
    """One problem, deterministic in (template, variant, index, seed); its answer is solved here."""
    if template not in BUILDERS:
        raise ValueError(f"lp_word_problems: template={template!r} is unknown; use one of {', '.join(TEMPLATES)}")
    if variant not in (0, 1, 2):
        raise ValueError(f"lp_word_problems: variant={variant!r}; use 0, 1 (train) or 2 (held out)")
    for attempt in range(50):
        rng = np.random.default_rng(stable_seed("lp_word_problems", template, variant, index, seed, attempt))
        flags = {k: bool(rng.random() < p) for k, p in
                 (("minimum", 0.5), ("tricky", 0.45), ("combined", 0.35), ("integer", 0.35))}
        clauses = BUILDERS[template](rng, variant, flags)
        problem = Problem(f"{template}-{variant}-{seed}-{index}", template, variant, clauses)
        comb = [c for c in clauses if c.kind == "combined"]
        if comb:  # a combined cap that binds: 80 % of the total output without it
            base = correct_lp(Problem(problem.pid, template, variant, [c for c in clauses if c.kind != "combined"]))
            sol = solve(base)
            if sol.status != "optimal":
                continue
            total = _total_output(base)
            if total is None or total < 2:
                clauses.remove(comb[0])
            else:
                cap = float(np.floor(0.8 * total))
                comb[0].data["rhs"] = cap
                comb[0].text = comb[0].text.format(cap=_fmt(cap))
        sol = solve(correct_lp(problem))
        if sol.status == "optimal":
            problem.answer = sol.objective
            return problem
    raise RuntimeError(f"lp_word_problems: no feasible {template} problem for index {index}")


def _total_output(lp: LP) -> float | None:
    """Sum of the variables at the optimum of ``lp`` (to place a binding combined cap)."""
    from scipy.optimize import linprog

    names = lp.variables()
    sign = -1.0 if lp.sense == "max" else 1.0
    a_ub, b_ub = [], []
    for con in lp.constraints:
        row = np.array([con.coeffs.get(v, 0.0) for v in names])
        if con.op == "<=":
            a_ub.append(row), b_ub.append(con.rhs)
        elif con.op == ">=":
            a_ub.append(-row), b_ub.append(-con.rhs)
    res = linprog([sign * lp.objective.get(v, 0.0) for v in names], A_ub=np.array(a_ub) if a_ub else None,
                  b_ub=b_ub or None, method="highs")
    return float(res.x.sum()) if res.status == 0 else None


def problems(split: str, n_per_template: int, seed: int = 0) -> list[Problem]:
    """``split`` train (variants 0 and 1, alternating) or heldout (variant 2), ``n_per_template`` per template."""
    if split not in ("train", "heldout"):
        raise ValueError(f"lp_word_problems: split={split!r}; use train or heldout")
    variants = TRAIN_VARIANTS if split == "train" else HELDOUT_VARIANTS
    return [make_problem(t, variants[i % len(variants)], i, seed) for t in TEMPLATES for i in range(n_per_template)]


# ---- the task (for a language policy) ------------------------------------------------------------------------------

FORMAT = ("Write the linear program in this format, one item per line:\n"
          "maximize: 3 x + 2 y   (or minimize: ...)\n"
          "subject to:\n"
          "x + y <= 4\n"
          "x - y >= 1\n"
          "integer: x, y   (only if variables must be whole numbers)\n"
          "Variables are non-negative unless listed in a line 'free: x'.")


def parse_lp(text: str) -> LP:
    """Parse the ``FORMAT`` above; raises ValueError saying which line is wrong."""
    sense, objective, cons, integer, free = None, None, [], set(), set()
    for raw in text.splitlines():
        line = raw.strip().strip("`").strip()
        low = line.lower()
        if not line or low.startswith("subject to"):
            continue
        m = re.match(r"^(maximize|minimize|max|min)\s*:?\s*(.+)$", line, re.IGNORECASE)
        if m and objective is None:
            sense = "max" if m.group(1).lower().startswith("max") else "min"
            objective = _linear(m.group(2), raw)
            continue
        m = re.match(r"^(integer|integers|int|free)\s*:\s*(.*)$", line, re.IGNORECASE)
        if m:
            names = {n.strip() for n in m.group(2).split(",") if n.strip()}
            (free if m.group(1).lower() == "free" else integer).update(names)
            continue
        m = re.match(r"^(.+?)(<=|>=|==|=|≤|≥)\s*([-+]?\d+(?:\.\d+)?)\s*$", line)
        if m:
            op = {"=": "==", "≤": "<=", "≥": ">="}.get(m.group(2), m.group(2))
            cons.append(Constraint(_linear(m.group(1), raw), op, float(m.group(3))))
            continue
        if objective is not None:  # stray prose after the model: stop reading
            break
    if objective is None:
        raise ValueError("no 'maximize:' or 'minimize:' line")
    return LP(sense, objective, cons, integer, free)


_TERM = re.compile(r"([-+]?)\s*(\d+(?:\.\d+)?)?\s*\*?\s*([A-Za-z_][A-Za-z0-9_]*)")


def _linear(expr: str, line: str) -> dict[str, float]:
    out: dict[str, float] = {}
    rest = expr
    for m in _TERM.finditer(expr):
        sign = -1.0 if m.group(1) == "-" else 1.0
        coef = float(m.group(2)) if m.group(2) else 1.0
        out[m.group(3)] = out.get(m.group(3), 0.0) + sign * coef
        rest = rest.replace(m.group(0), "", 1)
    if not out or rest.strip(" +"):
        raise ValueError(f"cannot read the linear expression in line {line.strip()!r}")
    return out


def answer_of(completion: str) -> float | None:
    """The objective value of the LP a completion writes (None when it does not parse or solve)."""
    try:
        sol = solve(parse_lp(completion))
    except ValueError:
        return None
    return sol.objective if sol.status == "optimal" else None


class LPWordProblemsTask:
    name = "lp_word_problems"

    def __init__(self, seed: int, eval_size: int, train_per_template: int, chat: bool):
        self.seed, self.chat = seed, chat
        self._train = problems("train", train_per_template, seed)
        per = max(1, -(-eval_size // len(TEMPLATES)))
        self._eval = problems("heldout", per, seed)[: max(eval_size, 1)]

    def example(self, p: Problem) -> Example:
        text = f"{p.text}\n\n{FORMAT}"
        return Example(prompt=make_prompt(text, self.chat), answer=repr(p.answer),
                       meta={"task": self.name, "pid": p.pid, "template": p.template, "variant": p.variant})

    def train_size(self) -> int:
        return len(self._train)

    def train_example(self, i: int) -> Example:
        return self.example(self._train[i % len(self._train)])

    def eval_examples(self) -> list[Example]:
        return [self.example(p) for p in self._eval]

    def correct(self, completion: str, example: Example) -> bool:
        return is_correct(answer_of(completion), float(example.answer))


@register("task", "lp_word_problems", description="LP word problems checked by HiGHS (AlphaOPT's toy setting)")
@strict_params("lp_word_problems")
def lp_word_problems(seed: int, eval_size: int = 64, *, train_per_template: int = 50,
                     chat: bool = True) -> LPWordProblemsTask:
    """Train: template variants 0 and 1; eval: the held-out variant 2. Completions are LPs in ``FORMAT``."""
    return LPWordProblemsTask(seed, eval_size, train_per_template, chat)
