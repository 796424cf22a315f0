"""Small SQLite databases and templated text-to-SQL questions that ship with entropo (as code, not as files).

Four schema families — ``company`` (emp, dept), ``library`` (book, author), ``shop`` (product, orders) and
``school`` (student, score) — each in ``INSTANCES`` instances whose contents (names, cities, genres, prices, ...) are
drawn from a seeded ``random.Random``, so ``company_0`` and ``company_3`` share a schema but not their values. Every
database gets questions from a handful of templates per family (filters, joins, aggregates, GROUP BY, ORDER BY/LIMIT)
with their gold SQL, instantiated from the database's own rows so every question has a non-empty answer.

Split **by database**: instance ``HELDOUT_INSTANCE`` of every family is held out (its questions are evaluation
only); the other instances are training databases. Held-out databases have seen schemas and new contents (values the
model has to copy from the question rather than memorise).

The ``.sqlite`` files are built deterministically on first use (:func:`database_path`) into
``$ENTROPO_SQL_DIR`` or ``~/.cache/entropo/sql/v<DATA_VERSION>`` (written to a temporary file, then renamed, so
concurrent processes never read a half-written database). Nothing binary is committed; delete the directory to
regenerate. Everything here is a pure function of the database id.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import sqlite3
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any



def stable_seed(*parts: Any) -> int:
    """A 63-bit seed from ``repr(parts)`` (SHA-256; same in every process, unlike ``hash``). Same rule as
    ``entropo.tasks.base.stable_seed``, repeated here so the environments package does not import the tasks."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode("utf-8")).digest()[:8], "big") >> 1

DATA_VERSION = 1
FAMILIES = ("company", "library", "shop", "school")
INSTANCES = 4
HELDOUT_INSTANCE = 3
MAX_PER_TEMPLATE = 5

FIRST_NAMES = """Ada Ben Cleo Dan Eva Finn Gus Hana Ivan Jade Kai Lena Milo Nora Omar Pia Quin Rosa Sam Tara Uma Vic
    Wes Xena Yara Zoe Abe Bea Cal Dora Eli Faye Gil Hugo Iris Jon""".split()
CITIES = "Oslo Lima Rome Kiev Bonn Nice Pune Cork Bern Graz Riga Turin Leeds Porto".split()
DEPTS = "Sales Legal Support Research Finance Design Marketing Ops Audit Training".split()
GENRES = "drama poetry travel history science fantasy crime horror".split()
COUNTRIES = "Peru Chile Spain Italy Japan Kenya Norway Ghana Nepal Cuba".split()
TITLE_A = "Red Blue Silent Lost Last First Green Hidden Golden Broken Quiet Dark".split()
TITLE_B = "River Garden Tower Road Winter Island Letter Forest Harbor Mirror Bridge Song".split()
CATEGORIES = "toys tools books games food drinks garden music".split()
PRODUCT_A = "Super Mini Mega Smart Basic Eco Turbo Nova Pixel Solar".split()
PRODUCT_B = "Lamp Drill Kite Mug Chair Pen Clock Fan Bag Ball".split()
SUBJECTS = "math art music physics history biology".split()


def database_ids(split: str = "all") -> list[str]:
    """``"family_instance"`` ids: ``split`` is ``"train"``, ``"eval"`` (the held-out databases) or ``"all"``."""
    if split not in ("train", "eval", "all"):
        raise ValueError(f"sql_data: split must be 'train', 'eval' or 'all', got {split!r}")
    ids = [f"{family}_{i}" for family in FAMILIES for i in range(INSTANCES)]
    return [d for d in ids if split == "all" or split_of(d) == split]


def split_of(db_id: str) -> str:
    family, instance = _parse(db_id)
    return "eval" if instance == HELDOUT_INSTANCE else "train"


def _parse(db_id: str) -> tuple[str, int]:
    family, _, instance = str(db_id).rpartition("_")
    if family not in FAMILIES or not instance.isdigit() or not 0 <= int(instance) < INSTANCES:
        raise ValueError(f"sql_data: unknown database {db_id!r}; known: {', '.join(database_ids())}")
    return family, int(instance)


# ---- contents ------------------------------------------------------------------------------------------------------

SCHEMAS: dict[str, list[tuple[str, list[tuple[str, str]]]]] = {
    "company": [("dept", [("id", "INTEGER PRIMARY KEY"), ("name", "TEXT"), ("floor", "INTEGER")]),
                ("emp", [("id", "INTEGER PRIMARY KEY"), ("name", "TEXT"), ("dept_id", "INTEGER"),
                         ("salary", "INTEGER"), ("city", "TEXT")])],
    "library": [("author", [("id", "INTEGER PRIMARY KEY"), ("name", "TEXT"), ("country", "TEXT")]),
                ("book", [("id", "INTEGER PRIMARY KEY"), ("title", "TEXT"), ("author_id", "INTEGER"),
                          ("year", "INTEGER"), ("genre", "TEXT")])],
    "shop": [("product", [("id", "INTEGER PRIMARY KEY"), ("name", "TEXT"), ("category", "TEXT"),
                          ("price", "INTEGER")]),
             ("orders", [("id", "INTEGER PRIMARY KEY"), ("product_id", "INTEGER"), ("qty", "INTEGER"),
                         ("customer", "TEXT")])],
    "school": [("student", [("id", "INTEGER PRIMARY KEY"), ("name", "TEXT"), ("grade", "INTEGER"),
                            ("city", "TEXT")]),
               ("score", [("id", "INTEGER PRIMARY KEY"), ("student_id", "INTEGER"), ("subject", "TEXT"),
                          ("points", "INTEGER")])],
}


@lru_cache(maxsize=None)
def tables(db_id: str) -> dict[str, list[tuple]]:
    """The rows of every table of ``db_id`` (deterministic in the id)."""
    family, _ = _parse(db_id)
    rng = random.Random(stable_seed("entropo.sql_data", DATA_VERSION, db_id))
    names = rng.sample(FIRST_NAMES, 14)
    if family == "company":
        depts = rng.sample(DEPTS, 4)
        floors = rng.sample(range(1, 9), 4)
        cities = rng.sample(CITIES, 4)
        salaries = rng.sample(range(30, 99), 12)
        dept_rows = [(i + 1, depts[i], floors[i]) for i in range(4)]
        emp_rows = [(i + 1, names[i], rng.randint(1, 4), salaries[i], rng.choice(cities)) for i in range(12)]
        return {"dept": dept_rows, "emp": emp_rows}
    if family == "library":
        countries = rng.sample(COUNTRIES, 3)
        titles = rng.sample([f"{a} {b}" for a in TITLE_A for b in TITLE_B], 12)
        years = rng.sample(range(1950, 2024), 12)
        genres = rng.sample(GENRES, 4)
        author_rows = [(i + 1, names[i], rng.choice(countries)) for i in range(5)]
        book_rows = [(i + 1, titles[i], rng.randint(1, 5), years[i], rng.choice(genres)) for i in range(12)]
        return {"author": author_rows, "book": book_rows}
    if family == "shop":
        categories = rng.sample(CATEGORIES, 3)
        products = rng.sample([f"{a} {b}" for a in PRODUCT_A for b in PRODUCT_B], 10)
        prices = rng.sample(range(2, 99), 10)
        customers = names[:5]
        product_rows = [(i + 1, products[i], rng.choice(categories), prices[i]) for i in range(10)]
        order_rows = [(i + 1, rng.randint(1, 10), rng.randint(1, 5), rng.choice(customers)) for i in range(15)]
        return {"product": product_rows, "orders": order_rows}
    cities = rng.sample(CITIES, 3)
    subjects = rng.sample(SUBJECTS, 3)
    student_rows = [(i + 1, names[i], rng.randint(1, 3), rng.choice(cities)) for i in range(10)]
    score_rows, sid = [], 1
    for student in range(1, 11):
        for subject in rng.sample(subjects, 2):  # at most one score per (student, subject)
            score_rows.append((sid, student, subject, rng.randint(40, 99)))
            sid += 1
    return {"student": student_rows, "score": score_rows}


def schema_text(db_id: str) -> str:
    """The schema as the prompt shows it: ``emp(id, name, dept_id, salary, city); dept(id, name, floor)``."""
    family, _ = _parse(db_id)
    return "; ".join(f"{name}({', '.join(c for c, _ in cols)})" for name, cols in SCHEMAS[family])


def build_database(db_id: str, path: str | Path) -> Path:
    """Write ``db_id`` as a SQLite file at ``path`` (atomically: a temporary file renamed into place)."""
    family, _ = _parse(db_id)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{db_id}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        conn = sqlite3.connect(tmp)
        rows = tables(db_id)
        for name, cols in SCHEMAS[family]:
            conn.execute(f"CREATE TABLE {name} ({', '.join(f'{c} {t}' for c, t in cols)})")
            conn.executemany(f"INSERT INTO {name} VALUES ({', '.join('?' * len(cols))})", rows[name])
        conn.commit()
        conn.close()
        os.chmod(tmp, 0o644)  # readable by the sandbox's unprivileged uid
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def data_dir() -> Path:
    return Path(os.environ.get("ENTROPO_SQL_DIR") or Path.home() / ".cache" / "entropo" / "sql" / f"v{DATA_VERSION}")


def database_path(db_id: str, directory: str | Path | None = None) -> Path:
    """Path of ``db_id``'s SQLite file, built on first use (see the module docstring for the directory)."""
    _parse(db_id)
    path = Path(directory) if directory is not None else data_dir()
    path = path / f"{db_id}.sqlite"
    if not path.is_file():
        build_database(db_id, path)
    return path


# ---- questions -----------------------------------------------------------------------------------------------------

def _few(rng: random.Random, values: list[Any]) -> list[Any]:
    values = sorted(set(values), key=str)
    return rng.sample(values, min(MAX_PER_TEMPLATE, len(values)))


def _company(rows, rng):
    dept, emp = rows["dept"], rows["emp"]
    join = "FROM emp JOIN dept ON emp.dept_id = dept.id"
    used_depts = [d[1] for d in dept if any(e[2] == d[0] for e in emp)]
    salaries = sorted(e[3] for e in emp)
    for d in _few(rng, used_depts):
        yield "count_in_dept", f"How many employees work in {d}?", f"SELECT COUNT(*) {join} WHERE dept.name = '{d}'"
        yield "max_in_dept", f"What is the top salary in {d}?", f"SELECT MAX(salary) {join} WHERE dept.name = '{d}'"
    for c in _few(rng, [e[4] for e in emp]):
        yield "emp_in_city", f"Which employees live in {c}?", f"SELECT name FROM emp WHERE city = '{c}'"
        yield "avg_in_city", f"What is the average salary in {c}?", f"SELECT AVG(salary) FROM emp WHERE city = '{c}'"
    for n in _few(rng, salaries[2:-2]):
        yield "salary_above", f"Who earns more than {n}?", f"SELECT name FROM emp WHERE salary > {n}"
    for k in (1, 2, 3):
        yield ("top_paid", f"Who are the {k} best paid employees?",
               f"SELECT name FROM emp ORDER BY salary DESC LIMIT {k}")
    for f in _few(rng, [d[2] for d in dept]):
        yield "dept_on_floor", f"Which department is on floor {f}?", f"SELECT name FROM dept WHERE floor = {f}"
    yield ("per_dept", "How many employees are in each department?",
           f"SELECT dept.name, COUNT(*) {join} GROUP BY dept.name")


def _library(rows, rng):
    author, book = rows["author"], rows["book"]
    join = "FROM book JOIN author ON book.author_id = author.id"
    writers = [a[1] for a in author if any(b[2] == a[0] for b in book)]
    years = sorted(b[3] for b in book)
    for a in _few(rng, writers):
        yield "books_by", f"How many books did {a} write?", f"SELECT COUNT(*) {join} WHERE author.name = '{a}'"
    for g in _few(rng, [b[4] for b in book]):
        yield "genre_titles", f"List the {g} books.", f"SELECT title FROM book WHERE genre = '{g}'"
    for y in _few(rng, years[2:-2]):
        yield "after_year", f"Which books came out after {y}?", f"SELECT title FROM book WHERE year > {y}"
    for k in (1, 2, 3):
        yield "newest", f"List the {k} newest books.", f"SELECT title FROM book ORDER BY year DESC LIMIT {k}"
    yield "oldest", "What is the oldest book?", "SELECT title FROM book ORDER BY year LIMIT 1"
    for c in _few(rng, [a[2] for a in author]):
        yield "authors_from", f"Which authors are from {c}?", f"SELECT name FROM author WHERE country = '{c}'"
    for t in _few(rng, [b[1] for b in book]):
        yield "who_wrote", f"Who wrote {t}?", f"SELECT author.name {join} WHERE book.title = '{t}'"
    yield "per_genre", "How many books are there per genre?", "SELECT genre, COUNT(*) FROM book GROUP BY genre"


def _shop(rows, rng):
    product, orders = rows["product"], rows["orders"]
    join = "FROM orders JOIN product ON orders.product_id = product.id"
    prices = sorted(p[3] for p in product)
    for c in _few(rng, [p[2] for p in product]):
        yield "count_cat", f"How many products are in {c}?", f"SELECT COUNT(*) FROM product WHERE category = '{c}'"
        yield "avg_cat", f"What is the average price of {c}?", f"SELECT AVG(price) FROM product WHERE category = '{c}'"
    for p in _few(rng, prices[2:-2]):
        yield "cheaper", f"Which products cost less than {p}?", f"SELECT name FROM product WHERE price < {p}"
    for k in (1, 2, 3):
        yield "cheapest", f"List the {k} cheapest products.", f"SELECT name FROM product ORDER BY price LIMIT {k}"
    yield "priciest", "What is the most expensive product?", "SELECT name FROM product ORDER BY price DESC LIMIT 1"
    for c in _few(rng, [o[3] for o in orders]):
        yield "ordered_by", f"What did {c} order?", f"SELECT product.name {join} WHERE orders.customer = '{c}'"
        yield "qty_by", f"How many items did {c} buy?", f"SELECT SUM(qty) FROM orders WHERE customer = '{c}'"


def _school(rows, rng):
    student, score = rows["student"], rows["score"]
    join = "FROM score JOIN student ON score.student_id = student.id"
    for g in _few(rng, [s[2] for s in student]):
        yield "in_grade", f"Which students are in grade {g}?", f"SELECT name FROM student WHERE grade = {g}"
    for c in _few(rng, [s[3] for s in student]):
        yield "count_city", f"How many students live in {c}?", f"SELECT COUNT(*) FROM student WHERE city = '{c}'"
    for n in _few(rng, [s[1] for s in student]):
        yield "avg_of", f"What is the average score of {n}?", f"SELECT AVG(points) {join} WHERE student.name = '{n}'"
    subjects = sorted({s[2] for s in score})
    for subject in subjects:
        yield ("best_in", f"What is the best score in {subject}?",
               f"SELECT MAX(points) FROM score WHERE subject = '{subject}'")
        points = sorted(s[3] for s in score if s[2] == subject)
        for p in _few(rng, points[1:-1])[:2]:
            yield ("above_in", f"Who scored above {p} in {subject}?",
                   f"SELECT student.name {join} WHERE score.subject = '{subject}' AND score.points > {p}")
    yield "per_grade", "How many students are in each grade?", "SELECT grade, COUNT(*) FROM student GROUP BY grade"


_TEMPLATES = {"company": _company, "library": _library, "shop": _shop, "school": _school}


@lru_cache(maxsize=None)
def questions(db_id: str) -> tuple[dict[str, str], ...]:
    """The questions of ``db_id``: dicts with ``qid``, ``db_id``, ``template``, ``question`` and ``sql`` (gold)."""
    family, _ = _parse(db_id)
    rng = random.Random(stable_seed("entropo.sql_data.questions", DATA_VERSION, db_id))
    out = []
    for template, question, sql in _TEMPLATES[family](tables(db_id), rng):
        out.append({"qid": f"{db_id}/{len(out)}", "db_id": db_id, "template": template, "question": question,
                    "sql": sql})
    return tuple(out)


def all_questions(split: str = "all") -> list[dict[str, str]]:
    """Every question of the databases of ``split`` (``"train"``, ``"eval"`` or ``"all"``), in a fixed order."""
    return [q for db_id in database_ids(split) for q in questions(db_id)]


_ORDER_BY = re.compile(r"\border\s+by\b", re.IGNORECASE)


def has_order_by(sql: str) -> bool:
    """Whether a (gold) query orders its result, which makes the row order part of the answer."""
    return bool(_ORDER_BY.search(re.sub(r"'(?:[^']|'')*'", "''", sql)))
