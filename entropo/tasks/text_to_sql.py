"""``text_to_sql``: templated questions over the small SQLite databases of ``entropo.envs.sql_data``, split by
database (registry kind ``task``). Used with the ``text_to_sql`` environment (ReEx-SQL, arXiv 2505.12768).

Each example's prompt shows the schema and the question (``template`` with ``{schema}`` and ``{question}``); its
``answer`` and ``meta["sql"]`` are the gold query, ``meta["db_id"]`` its database, ``target`` a one-turn gold
completion ``<final_sql>...</final_sql>`` (for single-turn warm-ups). Training examples come from the training
databases only, evaluation examples from the held-out databases only (``sql_data.HELDOUT_INSTANCE``). The verifier
``correct`` executes the last ``<final_sql>`` of a completion and compares its result set with the gold query's.
"""

from __future__ import annotations

import random

from entropo.envs import sql_data
from entropo.envs.text_to_sql import execute, same_result, tagged
from entropo.registry import register
from entropo.tasks.base import make_prompt, stable_seed, strict_params
from entropo.types import Example

DEFAULT_TEMPLATE = "{schema}\n{question}"


class TextToSQLTask:
    name = "text_to_sql"

    def __init__(self, seed: int, eval_size: int, chat: bool, template: str, system_prompt: str | None,
                 final_tag: str, families: list[str] | None):
        unknown = [f for f in families or [] if f not in sql_data.FAMILIES]
        if unknown:
            raise ValueError(f"text_to_sql: unknown families {unknown}; choose from {list(sql_data.FAMILIES)}")
        keep = set(families or sql_data.FAMILIES)
        self.chat, self.template, self.system_prompt, self.final_tag = chat, template, system_prompt, final_tag
        train = [q for q in sql_data.all_questions("train") if q["db_id"].rpartition("_")[0] in keep]
        held = [q for q in sql_data.all_questions("eval") if q["db_id"].rpartition("_")[0] in keep]
        random.Random(stable_seed("text_to_sql.train", seed)).shuffle(train)
        random.Random(stable_seed("text_to_sql.eval", seed)).shuffle(held)
        self._train, self._eval = train, held[:eval_size]
        self._eval_examples = [self._example(q) for q in self._eval]

    def _example(self, q: dict) -> Example:
        text = self.template.format(schema=sql_data.schema_text(q["db_id"]), question=q["question"])
        return Example(prompt=make_prompt(text, self.chat, self.system_prompt), answer=q["sql"],
                       target=f"<{self.final_tag}>{q['sql']}</{self.final_tag}>",
                       meta={"task": self.name, "db_id": q["db_id"], "sql": q["sql"], "qid": q["qid"],
                             "template": q["template"], "split": sql_data.split_of(q["db_id"])})

    def train_size(self) -> int:
        return len(self._train)

    def train_example(self, i: int) -> Example:
        return self._example(self._train[i % len(self._train)])

    def eval_examples(self) -> list[Example]:
        return list(self._eval_examples)

    def correct(self, completion: str, example: Example) -> bool:
        sql = tagged(completion, self.final_tag)
        if sql is None:
            return False
        db = sql_data.database_path(example.meta["db_id"])
        gold = example.meta.get("sql") or example.answer
        return same_result(execute(db, sql), execute(db, gold, trusted=True), sql_data.has_order_by(gold))


@register("task", "text_to_sql", description="text-to-SQL over small shipped SQLite databases, split by database")
@strict_params("text_to_sql")
def text_to_sql(seed: int, eval_size: int = 64, *, chat: bool = True, template: str = DEFAULT_TEMPLATE,
                system_prompt: str | None = None, final_tag: str = "final_sql",
                families: list[str] | None = None) -> TextToSQLTask:
    """Params: ``chat`` (message prompts), ``template`` (``{schema}``, ``{question}``), ``system_prompt``,
    ``final_tag`` (the answer tag the verifier reads), ``families`` (restrict to some schema families)."""
    if "{question}" not in template:
        raise ValueError("text_to_sql: template must contain {question}")
    return TextToSQLTask(seed, eval_size, chat, template, system_prompt, final_tag, families)
