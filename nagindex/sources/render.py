"""Records -> text with ``ingest --text-template``: for inputs whose text is not one field.

Instruction-tuning pools (Alpaca-style ``instruction``/``input``/``output``, chat ``messages``
lists) and multi-field web records are rendered with a Jinja template, each field a variable, in
the sandbox the target registry uses (``nagindex.templates``). The template is part of the index
identity (the manifest records it, an append with another is refused), and texts read back for
``--with-text`` and decontamination are rendered with it again, so they are the encoded texts.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from nagindex.errors import InputError
from nagindex.templates import jinja_env

TEMPLATE_OPTION = "--text-template"


def load_text_template(value: str) -> str:
    """The template given on the command line: ``value`` itself, or the text of the file ``@path``.

    One trailing newline of a file is dropped, as Jinja drops it when rendering: the same template
    given inline or from a file is then the same index identity.
    """
    if not value.startswith("@"):
        return value
    path = Path(value[1:]).expanduser()
    try:
        return path.read_text("utf-8").removesuffix("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{TEMPLATE_OPTION} {value}: cannot read {path}: {exc}") from None


def check_text_template(template: str | None, text_field: str) -> None:
    """Before any work (a bad template would reject every record): the template compiles and is not
    given beside an explicit text field."""
    if template is None:
        return
    if text_field != "auto":
        raise InputError(f"--text-field {text_field} and {TEMPLATE_OPTION} exclude each other: the template "
                         "makes the text (drop --text-field)")
    compile_text_template(template)


@lru_cache(maxsize=8)
def compile_text_template(template: str) -> Any:
    """The compiled template (once per process: records are rendered millions of times); a syntax
    error raises ``InputError`` naming the option and line, before any record is read."""
    from jinja2 import TemplateSyntaxError

    if not template.strip():
        raise InputError(f"{TEMPLATE_OPTION} is empty: every document would be empty")
    try:
        return jinja_env().from_string(template)
    except TemplateSyntaxError as exc:
        raise InputError(f"{TEMPLATE_OPTION}: invalid Jinja (line {exc.lineno}): {exc.message}") from None

