"""The configuration reference (``docs/reference/config.md``) and ``config/full.toml``, both from the
pydantic models of :mod:`s3stream.config`: every table, every field's type, bounds, default and
``description``. Used by ``scripts/gen_docs.py``."""

from __future__ import annotations

import json
import textwrap
import types
import typing
from dataclasses import dataclass
from typing import Any

import annotated_types
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from s3stream.config import Settings

WIDTH = 100
#: The example entry of ``[handlers.NAME]`` in full.toml: its name and options besides ``use``.
HANDLER_EXAMPLE = ("archive", {"path": "out/events.jsonl"})


@dataclass(frozen=True)
class Table:
    """One TOML table of the configuration."""

    header: str  # "[s3]", "[[sources]]", "[handlers.NAME]"...
    env: str | None  # the S3STREAM_… prefix of its settings, when they can come from the environment
    model: type[BaseModel]
    optional: bool  # an optional table or a list of them: commented out in full.toml
    dict_of: bool  # [handlers.NAME]


def model_of(annotation: Any) -> tuple[type[BaseModel] | None, str]:
    """The model a field holds, and how: ``("one" | "optional" | "list" | "dict")``; None for a value."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        model, kind = model_of(inner[0]) if len(inner) == 1 else (None, "")
        return (model, "optional") if model and kind == "one" else (None, "")
    if origin is list and args:
        return (model_of(args[0])[0], "list")
    if origin is dict and len(args) == 2:
        return (model_of(args[1])[0], "dict")
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, "one"
    return None, ""


def tables(model: type[BaseModel] = Settings, path: str = "", env: str | None = "S3STREAM",
           optional: bool = False) -> list[Table]:
    """Every table under ``model``, depth first, in the models' field order."""
    out: list[Table] = []
    for name, field in model.model_fields.items():
        sub, kind = model_of(field.annotation)
        if sub is None:
            continue
        dotted = f"{path}.{name}" if path else name
        header = {"list": f"[[{dotted}]]", "dict": f"[{dotted}.NAME]"}.get(kind, f"[{dotted}]")
        sub_env = (f"{env}{'__' if path else '_'}{name.upper()}") if env and kind == "one" else None
        table = Table(header, sub_env, sub, optional or kind == "optional" or (kind == "list" and bool(path)),
                      kind == "dict")
        out.append(table)
        out += tables(sub, dotted, sub_env, table.optional)
    return out


def scalars(model: type[BaseModel]) -> dict[str, FieldInfo]:
    return {name: f for name, f in model.model_fields.items() if model_of(f.annotation)[0] is None}


def type_name(annotation: Any) -> str:
    """A field's type in words: ``string``, ``"auto" | "path"``, ``number or unset``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        words = " | ".join(type_name(a) for a in inner)
        return f"{words} or unset" if len(inner) < len(args) else words
    if origin is list:
        return f"list of {type_name(args[0])}"
    if annotation is SecretStr:
        return "string (secret)"
    return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(annotation, str(annotation))


def bounds(field: FieldInfo) -> str:
    """A field's constraints: ``> 0, ≤ 1024``, ``pattern ^[0-9]{12}$``."""
    out = []
    for item in field.metadata:
        for attr, sign in (("gt", "more than"), ("ge", "at least"), ("lt", "less than"), ("le", "at most")):
            value = getattr(item, attr, None)
            if isinstance(item, annotated_types.BaseMetadata) and value is not None:
                shown = f"{value:,}" if isinstance(value, int) and value >= 10_000 else str(value)
                out.append(f"{sign} {shown}")
        if isinstance(item, annotated_types.MinLen) and item.min_length:
            out.append("not empty")
        pattern = getattr(item, "pattern", None)
        if pattern:
            out.append(f"matches `{pattern}`")
    return ", ".join(out)


def default(field: FieldInfo) -> Any:
    """The field's default, or PydanticUndefined when it is required or computed (region)."""
    if field.default_factory is not None:
        made = field.default_factory()  # type: ignore[call-arg]
        return made if made in ([], {}) else PydanticUndefined
    return field.default


def example(field: FieldInfo) -> Any:
    return field.examples[0] if field.examples else ""


# --- docs/reference/config.md ------------------------------------------------------------------------


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def default_text(field: FieldInfo) -> str:
    value = default(field)
    if value is PydanticUndefined:
        return "from the environment" if field.default_factory else "required"
    if value is None:
        return "unset"
    if value in ([], {}):
        return "none"
    return f"`{toml_value(value)}`"


def config_reference() -> str:
    """``docs/reference/config.md``."""
    lines = [
        "# Configuration reference", "",
        "<!-- Generated by scripts/gen_docs.py from the settings of `s3stream.config`: edit the "
        "fields' descriptions there, then run the script. -->", "",
        "`s3stream run --config FILE` (and every command's `--config`) reads TOML. Each setting below "
        "can also come from the environment as `S3STREAM_<SECTION>__<KEY>` "
        "(`S3STREAM_CONSUMER__CONCURRENCY=32`, "
        "`S3STREAM_CONSUMER__LEASES__DURATION=10`; values are read as TOML values, else as strings), and a "
        "command-line flag beats both. Everything is validated at start: a bad value or an unknown key "
        "(outside `[handlers.NAME]`) is one line naming the field, exit code 2. "
        "`s3stream config check FILE` validates a file and opens its handlers; `s3stream config show` "
        "prints the effective settings with secrets masked. `config/full.toml` has every setting at its "
        "default, with these descriptions as comments.", "",
    ]
    for table in tables():
        fields = scalars(table.model)
        if not fields:
            continue
        lines += [f"## `{table.header}`", "", cell(" ".join((table.model.__doc__ or "").split())), ""]
        if table.env:
            lines += [f"From the environment: `{table.env}__<SETTING>`.", ""]
        lines += ["| setting | type | default | description |", "|---|---|---|---|"]
        for name, field in fields.items():
            kind = ", ".join(x for x in (type_name(field.annotation), bounds(field)) if x)
            lines.append(f"| `{name}` | {cell(kind)} | {default_text(field)} | "
                         f"{cell(field.description or '')} |")
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


# --- config/full.toml --------------------------------------------------------------------------------


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | dict) and not value:
        return "[]" if isinstance(value, list) else "{}"
    raise TypeError(f"no TOML form for {value!r}")


def comment(text: str, indent: str = "") -> list[str]:
    return textwrap.wrap(text, WIDTH - len(indent) - 2, initial_indent=f"{indent}# ",
                         subsequent_indent=f"{indent}# ", break_on_hyphens=False)


def table_lines(table: Table) -> list[str]:
    """One table of full.toml: a banner, the header, and every setting with its description above."""
    header = table.header.replace("NAME", HANDLER_EXAMPLE[0])
    rule = "# " + "-" * (WIDTH - 2)
    doc = " ".join((table.model.__doc__ or "").split())
    body = [header]
    for name, field in scalars(table.model).items():
        text = field.description or ""
        limits = bounds(field)
        body += ["", *comment(f"{text} ({limits})" if limits else text)]
        value = default(field)
        if value is PydanticUndefined:
            required = field.default_factory is None
            body.append(("" if required else "# ") + f"{name} = {toml_value(example(field))}")
        elif value is None:
            body.append(f"# {name} = {toml_value(example(field))}")
        else:
            body.append(f"{name} = {toml_value(value)}")
    if table.dict_of:
        body += ["", *comment("Every other key is an option of the handler: the built-in jsonl appends "
                              "one JSON line per message to path.")]
        body += [f"{key} = {toml_value(value)}" for key, value in HANDLER_EXAMPLE[1].items()]
    if table.optional:
        body = [f"# {line}" if line and not line.startswith("#") else line for line in body]
        body = [line if line else "#" for line in body]
        doc += " (An example, commented out.)"
    return ["", rule, *comment(f"{header}: {doc}"), rule, *body]


def full_toml() -> str:
    """``config/full.toml``: every setting, at its default, with its description."""
    head = [
        "# full.toml: every setting at its default value, with what it means and its bounds.",
        "#",
        "# Generated by scripts/gen_docs.py from the settings' descriptions in s3stream/config/: edit them",
        "# there, then run the script (CI checks that this file is up to date).",
        "#",
        "# Validation happens once at start; a bad value stops s3stream with a message naming the field",
        '# (e.g. "invalid config: consumer.concurrency: Input should be greater than 0 (got 0)"). Unknown',
        "# keys are errors too, except inside [handlers.NAME]. Times are in seconds and may be fractional.",
        "# Any setting can also come from the environment as S3STREAM_<SECTION>__<KEY>, and a command-line",
        "# flag beats both. A setting shown commented out is unset by default; its value is an example.",
        "#",
        "#   s3stream config check config/full.toml",
        "#   s3stream run --config config/full.toml",
    ]
    lines = head
    for table in tables():
        lines += table_lines(table)
    return "\n".join(lines) + "\n"
