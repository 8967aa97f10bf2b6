"""User grammar specs -> what xgrammar compiles: kinds, cache keys, validation, readable errors.

Regexes follow Python ``re`` syntax (what the seed's users write); JSON schemas may be a JSON string,
a dict or a pydantic model class.
"""
from __future__ import annotations

import json
import re
from typing import Any, Sequence

from .errors import InvalidRequestError

GRAMMAR_KINDS = ("regex", "json_schema", "ebnf", "json_object")

# xgrammar errors look like "[02:20:32] /project/cpp/regex_converter.cc:83: Regex parsing error ...".
_XGR_LOCATION = re.compile(r"^\[[\d:]+\]\s+\S+:\d+:\s*")


def _xgrammar_message(err: BaseException) -> str:
    """xgrammar's error text without its timestamp and C++ source location."""
    text = str(err).strip()
    text = _XGR_LOCATION.sub("", text)
    return text.replace("Check failed: (error.empty()) is false: ", "").strip()


def _short(spec: str, limit: int = 80) -> str:
    return spec if len(spec) <= limit else spec[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------------
# Regex: Python `re` syntax (what the seed's users write) -> the syntax xgrammar parses.
# ---------------------------------------------------------------------------------------------------
_QUANTIFIER = re.compile(r"\{(\d*)(?:(,)(\d*))?\}")


def normalize_regex(pattern: str) -> str:
    """Rewrite Python-only regex spellings that xgrammar rejects, keeping the language unchanged.

    * a ``{`` that does not open a valid quantifier is a literal in Python (``{"name": ...}``, the
      seed's own example) but a syntax error in xgrammar: escape it, and any stray ``}``;
    * ``{,n}`` means ``{0,n}`` in Python;
    * ``(?P<name>...)`` is Python's named group; xgrammar spells it ``(?<name>...)``.
    """
    out: list[str] = []
    i, n = 0, len(pattern)
    in_class = False
    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            out.append(pattern[i:i + 2])
            i += 2
            continue
        if in_class:
            if c == "]":
                in_class = False
            out.append(c)
            i += 1
            continue
        if c == "[":
            in_class = True
            out.append(c)
            i += 1
            # a ']' right after '[' or '[^' is a literal member, not the end of the class
            if i < n and pattern[i] == "^":
                out.append("^")
                i += 1
            if i < n and pattern[i] == "]":
                out.append("\\]")
                i += 1
            continue
        if c == "{":
            m = _QUANTIFIER.match(pattern, i)
            if m and (m.group(1) or m.group(2)):
                lo, comma, hi = m.group(1) or "0", m.group(2) or "", m.group(3) or ""
                out.append("{" + lo + comma + hi + "}")
                i = m.end()
            else:
                out.append("\\{")
                i += 1
            continue
        if c == "}":
            out.append("\\}")
            i += 1
            continue
        if pattern.startswith("(?P<", i):
            out.append("(?<")
            i += 4
            continue
        out.append(c)
        i += 1
    return "".join(out)


_REGEX_META = set(".^$*+?()[]{}|\\/")


def regex_for_choices(choices: Sequence[str]) -> str:
    """A regex matching exactly one of ``choices`` (for ``gen(choices=...)``); escapes metacharacters only,
    so Chinese and spaces stay readable in error messages."""
    if not choices or not all(isinstance(c, str) for c in choices):
        raise InvalidRequestError(f"choices must be a non-empty list of strings, got {choices!r}")
    escaped = ["".join("\\" + ch if ch in _REGEX_META else ch for ch in c) for c in choices]
    return "(" + "|".join(escaped) + ")"


# ---------------------------------------------------------------------------------------------------
# Spec canonicalisation (the cache key) and validation
# ---------------------------------------------------------------------------------------------------
def _schema_object(spec: Any) -> Any:
    """A JSON schema given as str / dict / pydantic model class -> the parsed schema object."""
    if isinstance(spec, type) and hasattr(spec, "model_json_schema"):
        return spec.model_json_schema()
    if isinstance(spec, (dict, bool)):
        return spec
    if isinstance(spec, str):
        try:
            return json.loads(spec)
        except json.JSONDecodeError as e:
            raise InvalidRequestError(
                f"invalid json_schema: not valid JSON ({e.msg} at line {e.lineno} column {e.colno}): "
                f"{_short(spec)!r}") from None
    raise InvalidRequestError(
        f"invalid json_schema: expected a JSON string, a dict or a pydantic model class, got {type(spec).__name__}")


def check_json_schema(schema: Any) -> None:
    """Reject schemas that are not valid JSON Schema, with jsonschema's message and the failing path."""
    if not isinstance(schema, (dict, bool)):
        raise InvalidRequestError(f"invalid json_schema: a schema must be an object or a boolean, got {schema!r}")
    import jsonschema

    cls = jsonschema.validators.validator_for(schema if isinstance(schema, dict) else {})
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "(root)"
        raise InvalidRequestError(f"invalid json_schema at {where}: {e.message}") from None


# Keywords whose values are data, not subschemas: never rewrite inside them.
_DATA_KEYWORDS = frozenset({"enum", "const", "default", "examples"})
# One JSON string character, no escape sequence. xgrammar's own maxLength translation uses [^"\\\r\n],
# which lets raw control characters through (invalid JSON); this class excludes all of them.
_JSON_CHAR = r'[^"\\\x00-\x1f]'


def rewrite_string_lengths(schema: Any) -> Any:
    """Express ``minLength``/``maxLength`` of plain strings as an equivalent ``pattern``.

    Why: xgrammar 0.2 expands a short bounded string (maxLength 4..16) into a repetition whose token
    mask is recomputed from scratch every step (~5 ms a request a step on CPU, as long as a model step
    of the embedded model), while the same bound written as a regex is cached (~0.01 ms). The language
    is the one xgrammar's own translation accepts (no escape sequences), minus raw control characters,
    which JSON forbids anyway.
    """
    if isinstance(schema, list):
        return [rewrite_string_lengths(x) for x in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: (v if k in _DATA_KEYWORDS else rewrite_string_lengths(v)) for k, v in schema.items()}
    lo, hi = out.get("minLength"), out.get("maxLength")
    plain = out.get("type") == "string" and not ({"pattern", "format", "enum", "const"} & out.keys())
    ints = all(x is None or (isinstance(x, int) and not isinstance(x, bool) and x >= 0) for x in (lo, hi))
    if plain and ints and (lo is not None or hi is not None):
        out.pop("minLength", None)
        out.pop("maxLength", None)
        out["pattern"] = f"^{_JSON_CHAR}{{{lo or 0},{'' if hi is None else hi}}}$"
    return out


def grammar_key(kind: str, spec: Any) -> tuple[str, str]:
    """The cache key ``(kind, canonical spec)``: JSON schemas re-serialised compactly (property order
    kept: it decides the output's key order), other specs as given."""
    if kind not in GRAMMAR_KINDS:
        raise InvalidRequestError(f"unknown grammar kind {kind!r}; expected one of {', '.join(GRAMMAR_KINDS)}")
    if kind == "json_schema" and spec == "$$ANY$$":  # SGLang's spelling of "any JSON object"
        kind = "json_object"
    if kind == "json_object":
        return kind, ""
    if kind == "json_schema":
        schema = _schema_object(spec)
        return kind, json.dumps(schema, ensure_ascii=False, separators=(",", ":"))
    if not isinstance(spec, str):
        raise InvalidRequestError(f"invalid {kind}: expected a string, got {type(spec).__name__}")
    if not spec:
        raise InvalidRequestError(f"invalid {kind}: the {kind} is empty")
    return kind, spec


def explain_compile_error(kind: str, spec: str, err: BaseException) -> str:
    """A user-facing message for a failed xgrammar compilation."""
    msg = _xgrammar_message(err)
    if kind == "regex":
        try:
            re.compile(spec)
        except re.error as py_err:  # a plain syntax error: Python's message is the clearest
            return f"invalid regex {_short(spec)!r}: {py_err.msg} at position {py_err.pos}"
        return f"invalid regex {_short(spec)!r}: not supported by the grammar engine: {msg}"
    if kind == "json_schema":
        return f"invalid json_schema: {msg}"
    if kind == "ebnf":
        return f"invalid ebnf grammar: {msg}"
    return f"invalid {kind}: {msg}"
