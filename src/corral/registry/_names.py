"""Names and words: normalised names, look-alike skeletons, query terms, ecosystems.

Pure functions, no I/O.  The registry compares names in three spellings:

- the *normalised name* (PEP 503: lowercase, runs of ``-``, ``_`` and ``.``
  become one ``-``) is what a user types and what exact matches use;
- the *skeleton* also drops separators and folds look-alike characters
  (``0``/``o``, ``1``/``l``/``i``, ``rn``/``m``, ``vv``/``w``...), so two ids
  with the same skeleton read alike and one of them is flagged at publish;
- *terms* are the lowercase words of a query, with stop words dropped and
  each word widened by a small synonym table (what users say vs. what
  summaries say: "parallel" finds "distributed", "docs" finds "documentation").
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

__all__ = [
    "ECOSYSTEMS",
    "control_char_error",
    "ECOSYSTEM_TAGS",
    "ecosystem_of",
    "name_tokens",
    "normalise_name",
    "query_terms",
    "skeleton",
    "words",
]

_SEP_RE: Final = re.compile(r"[-_.]+")
_WORD_RE: Final = re.compile(r"[a-z0-9]+")

#: Single glyphs that read alike, folded first (so that ``c1ick`` becomes ``cllck``
#: before the multi-character folds see it, exactly as ``click`` does).
_CONFUSABLE_CHARS: Final = str.maketrans({
    "0": "o", "1": "l", "i": "l", "|": "l", "!": "l", "5": "s", "$": "s", "3": "e",
    "4": "a", "@": "a", "7": "t", "8": "b", "9": "g", "6": "b", "2": "z",
})
#: Character pairs that read as one letter, folded after the single glyphs.
_CONFUSABLE_SEQS: Final = (
    ("rn", "m"),
    ("vv", "w"),
    ("cl", "d"),
)

#: C0 controls and DEL: never allowed in a name, an id, a query or a path.
_CONTROL_RE: Final = re.compile(r"[\x00-\x1f\x7f]")
#: The same less tab, newline and carriage return (allowed in free text).
_CONTROL_TEXT_RE: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

#: Words that carry no meaning in a plugin search.
STOP_WORDS: Final = frozenset(
    [
        "a", "an", "and", "are", "as", "at", "be", "by", "can", "do", "does", "for", "from", "how",
        "i", "in", "into", "is", "it", "its", "me", "my", "of", "on", "or", "so", "that", "the",
        "their", "them", "then", "there", "these", "this", "to", "want", "way", "we", "what",
        "when", "which", "while", "who", "will", "with", "without", "you", "your", "need", "needs",
        "using", "use", "via", "some", "any", "all", "make", "makes", "making", "get", "gets",
        "let", "lets", "like", "just", "python", "py", "run", "runs", "running",
    ]
)

#: What users say -> what summaries and names say.  Each entry widens a query
#: word into alternatives; kept small and literal so that results stay explainable.
_SYNONYMS: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {
        "parallel": ("distributed", "concurrent", "multiprocessing", "xdist", "cpus"),
        "concurrent": ("parallel", "distributed"),
        "test": ("testing", "tests", "pytest"),
        "tests": ("test", "testing", "pytest"),
        "testing": ("test", "tests", "pytest"),
        "unittest": ("test", "testing"),
        "docs": ("documentation", "docs"),
        "doc": ("documentation", "docs"),
        "documentation": ("docs", "sphinx", "mkdocs"),
        "site": ("website", "static", "pages"),
        "website": ("site", "static"),
        "lint": ("linter", "linting", "flake8", "checker"),
        "linter": ("lint", "linting", "flake8", "checker"),
        "linting": ("lint", "linter", "flake8", "checker"),
        "style": ("pep8", "formatter", "checker"),
        "format": ("formatter", "formatting"),
        "formatter": ("format", "formatting"),
        "coverage": ("cov",),
        "mock": ("mocking", "mocks", "fake"),
        "mocking": ("mock", "mocks"),
        "async": ("asyncio", "asynchronous"),
        "asyncio": ("async", "asynchronous"),
        "benchmark": ("benchmarking", "performance", "timing"),
        "timeout": ("timeouts", "hanging"),
        "env": ("environment", "dotenv"),
        "environment": ("env", "dotenv"),
        "http": ("https", "requests", "web"),
        "api": ("apis", "rest"),
        "rest": ("api", "restful"),
        "orm": ("database", "sqlalchemy"),
        "database": ("db", "sql", "orm"),
        "db": ("database",),
        "auth": ("authentication", "login", "oauth"),
        "authentication": ("auth", "login", "oauth"),
        "login": ("auth", "authentication"),
        "notebook": ("jupyter", "jupyterlab", "notebooks"),
        "notebooks": ("jupyter", "jupyterlab", "notebook"),
        "theme": ("themes",),
        "retry": ("rerun", "flaky", "rerunfailures", "retries"),
        "rerun": ("retry", "flaky", "rerunfailures"),
        "flaky": ("rerun", "retry", "rerunfailures"),
        "random": ("randomly", "shuffle", "randomize"),
        "order": ("ordering", "shuffle"),
        "markdown": ("md", "mkdocs"),
        "diagram": ("diagrams", "mermaid", "graphviz", "plantuml"),
        "s3": ("aws", "amazon"),
        "aws": ("amazon", "s3"),
        "cloud": ("aws", "gcp", "azure"),
        "schedule": ("scheduler", "cron", "scheduling"),
        "workflow": ("pipeline", "dag", "airflow"),
        "admin": ("administration", "dashboard"),
        "cors": ("cross", "origin"),
        "type": ("typing", "types", "mypy"),
        "types": ("typing", "type", "stubs"),
        "typing": ("type", "types", "mypy"),
        "security": ("bandit", "vulnerability", "secure"),
        "import": ("imports", "isort"),
        "imports": ("import", "isort"),
        "sort": ("sorting", "isort"),
        "complexity": ("mccabe", "cognitive"),
        "spelling": ("spell", "spellcheck", "typos"),
        "spell": ("spelling", "spellcheck"),
        "screenshot": ("screenshots", "image"),
        "browser": ("selenium", "playwright", "web"),
        "snapshot": ("snapshots", "syrupy"),
        "fixture": ("fixtures",),
        "fixtures": ("fixture",),
        "debug": ("debugger", "debugging", "toolbar"),
        "debugger": ("debug", "debugging"),
        "cache": ("caching", "cached"),
        "caching": ("cache", "cached"),
        "email": ("mail", "smtp"),
        "mail": ("email", "smtp"),
        "search": ("searching", "elasticsearch", "haystack"),
        "upload": ("uploads", "file", "storage"),
        "storage": ("storages", "upload", "s3"),
        "task": ("tasks", "queue", "celery"),
        "queue": ("tasks", "celery", "rq"),
        "graphql": ("graphene", "strawberry"),
        "pdf": ("reportlab", "weasyprint"),
        "excel": ("xlsx", "spreadsheet", "openpyxl"),
        "chart": ("charts", "plot", "plotting", "visualization"),
        "plot": ("plots", "plotting", "chart", "visualization"),
        "visualization": ("visualisation", "plot", "chart"),
        "visualisation": ("visualization", "plot", "chart"),
        "translation": ("i18n", "translations", "localization"),
        "i18n": ("translation", "internationalization", "localization"),
        "fake": ("faker", "factory", "mock"),
        "factory": ("factories", "factory_boy"),
        "colour": ("color", "colors"),
        "color": ("colour", "colors", "colored"),
        "output": ("report", "reporting"),
        "report": ("reports", "reporting", "html"),
        "fast": ("speed", "performance", "quick"),
        "speed": ("fast", "performance"),
        "slow": ("duration", "durations", "performance"),
        "time": ("timing", "freezegun", "duration"),
        "date": ("datetime", "time"),
        "freeze": ("freezegun", "frozen"),
        "watch": ("watcher", "reload", "autoreload"),
        "reload": ("autoreload", "watch", "livereload"),
        "live": ("livereload", "reload"),
        "dependency": ("dependencies", "deps"),
        "dependencies": ("dependency", "deps"),
        "jwt": ("token", "tokens"),
        "token": ("tokens", "jwt"),
        "websocket": ("websockets", "channels", "ws"),
        "websockets": ("websocket", "channels"),
        "llm": ("llms", "gpt", "openai", "language"),
        "ai": ("llm", "openai", "gpt"),
        "chatgpt": ("openai", "gpt"),
        "image": ("images", "pillow", "thumbnail"),
        "images": ("image", "pillow", "thumbnails"),
        "thumbnail": ("thumbnails", "image"),
        "json": ("jsonschema",),
        "yaml": ("yml",),
        "k8s": ("kubernetes",),
        "kubernetes": ("k8s",),
        "docker": ("container", "containers"),
        "postgres": ("postgresql", "psycopg"),
        "postgresql": ("postgres", "psycopg"),
        "mongo": ("mongodb", "pymongo"),
        "mongodb": ("mongo", "pymongo"),
    }
)

#: Ecosystem prefixes of package names -> (tag, category).  Checked in order.
ECOSYSTEMS: Final = (
    ("apache-airflow-providers-", "airflow", "workflow"),
    ("airflow-", "airflow", "workflow"),
    ("pytest-", "pytest", "testing"),
    ("flake8-", "flake8", "linting"),
    ("pylint-", "pylint", "linting"),
    ("mypy-", "mypy", "typing"),
    ("types-", "typing", "typing"),
    ("mkdocs-", "mkdocs", "documentation"),
    ("sphinxcontrib-", "sphinx", "documentation"),
    ("sphinx-", "sphinx", "documentation"),
    ("sphinx", "sphinx", "documentation"),
    ("django-", "django", "web"),
    ("djangocms-", "django", "web"),
    ("wagtail-", "wagtail", "web"),
    ("flask-", "flask", "web"),
    ("fastapi-", "fastapi", "web"),
    ("pyramid-", "pyramid", "web"),
    ("datasette-", "datasette", "data"),
    ("jupyterlab-", "jupyterlab", "notebook"),
    ("jupyter-", "jupyter", "notebook"),
    ("napari-", "napari", "science"),
    ("streamlit-", "streamlit", "data"),
    ("dash-", "dash", "data"),
    ("pandas-", "pandas", "data"),
    ("dbt-", "dbt", "data"),
    ("tap-", "singer", "data"),
    ("target-", "singer", "data"),
    ("odoo", "odoo", "erp"),
    ("trytond-", "tryton", "erp"),
    ("netbox-", "netbox", "network"),
    ("sentry-", "sentry", "monitoring"),
    ("mcp-", "mcp", "ai"),
    ("llm-", "llm", "ai"),
    ("langchain-", "langchain", "ai"),
    ("nonebot-", "nonebot", "bot"),
    ("nonebot", "nonebot", "bot"),
    ("pydantic-", "pydantic", "data"),
    ("sqlalchemy-", "sqlalchemy", "database"),
    ("torch", "torch", "ml"),
    ("scikit-", "scikit", "science"),
    ("pre-commit-", "pre-commit", "tooling"),
    ("tox-", "tox", "testing"),
    ("hatch-", "hatch", "packaging"),
    ("poetry-", "poetry", "packaging"),
)

_ECOSYSTEM_NAMES: Final = frozenset(e[1] for e in ECOSYSTEMS)
#: Ecosystem names a query may use to say "a plugin for X".
ECOSYSTEM_TAGS: Final = _ECOSYSTEM_NAMES - {"typing", "singer", "scikit"}
_BY_FIRST: Final[dict[str, list[tuple[str, str, str]]]] = {}
for _entry in ECOSYSTEMS:
    _BY_FIRST.setdefault(_entry[0][:2], []).append(_entry)


def normalise_name(name: str) -> str:
    """PEP 503 form: lowercase, runs of ``-_.`` become ``-`` (``Foo_Bar`` -> ``foo-bar``)."""
    return _SEP_RE.sub("-", name.strip().lower()).strip("-")


def skeleton(text: str) -> str:
    """A look-alike key: lowercase, separators dropped, confusable glyphs folded.

    Single glyphs fold first (``1``/``i`` -> ``l``, ``0`` -> ``o``), then pairs that
    read as one letter (``rn`` -> ``m``, ``vv`` -> ``w``, ``cl`` -> ``d``), so
    ``skeleton("c1ick") == skeleton("click")`` and ``skeleton("nurnpy") == skeleton("numpy")``.
    """
    out = _SEP_RE.sub("", text.lower()).translate(_CONFUSABLE_CHARS)
    for seq, repl in _CONFUSABLE_SEQS:
        out = out.replace(seq, repl)
    return out


def control_char_error(value: Any, where: str, *, free_text: bool = False,
                       ) -> tuple[str, str] | None:
    """``(field, message)`` for the first control character in ``value``, else None.

    ``value`` may nest dicts and lists; ``where`` names it (``query.q``,
    ``manifest``).  ``free_text`` allows tab, newline and carriage return.
    """
    if isinstance(value, str):
        found = (_CONTROL_TEXT_RE if free_text else _CONTROL_RE).search(value)
        if found is None:
            return None
        return where, (f"{where} contains the control character U+{ord(found.group()):04X} "
                       f"at offset {found.start()}; control characters are not allowed")
    if isinstance(value, Mapping):
        for key, item in value.items():
            bad = control_char_error(str(key), f"{where} key", free_text=False)
            bad = bad or control_char_error(item, f"{where}.{key}", free_text=free_text)
            if bad is not None:
                return bad
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            bad = control_char_error(item, f"{where}[{index}]", free_text=free_text)
            if bad is not None:
                return bad
    return None


def words(text: str) -> list[str]:
    """Lowercase alphanumeric words of ``text``, in order."""
    return _WORD_RE.findall(text.lower())


def name_tokens(name: str) -> list[str]:
    """The words of a name: ``pytest-xdist`` -> ``["pytest", "xdist"]``."""
    return words(name)


def ecosystem_of(name: str) -> tuple[str, str] | None:
    """``(tag, category)`` of a package name's ecosystem, or None."""
    norm = normalise_name(name)
    for prefix, tag, category in _BY_FIRST.get(norm[:2], ()):
        if norm.startswith(prefix) and norm != prefix.rstrip("-"):
            return tag, category
    if norm in _ECOSYSTEM_NAMES:
        for _, tag, category in ECOSYSTEMS:
            if tag == norm:
                return tag, category
    return None


def query_terms(query: str) -> list[tuple[str, ...]]:
    """The query as groups of alternatives: one group per meaningful word.

    The first alternative is the word itself; the others come from the
    synonym table.  Stop words are dropped unless the query is only stop words.
    """
    found = words(query)
    kept = [w for w in found if w not in STOP_WORDS] or found
    groups: list[tuple[str, ...]] = []
    seen: set[str] = set()
    for word in kept:
        if word in seen:
            continue
        seen.add(word)
        alts = [word]
        for alt in _SYNONYMS.get(word, ()):
            if alt not in alts:
                alts.append(alt)
        # plural/singular: "plugins" also finds "plugin" without a stemmer
        if len(word) > 3 and word.endswith("s") and word[:-1] not in alts:
            alts.append(word[:-1])
        groups.append(tuple(alts))
    return groups
