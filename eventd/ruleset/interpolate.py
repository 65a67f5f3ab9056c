"""`${VAR}` and `${VAR:-default}` in rule files, expanded from an injected environment at load.

Forms (as in shells and docker-compose):
    ${VAR}          the variable; unset is an error
    ${VAR:-text}    the variable, or `text` when it is unset or empty
    ${VAR-text}     the variable, or `text` when it is unset
    $${             a literal `${`
Any other `${` is an error, so a typo never reaches a URL silently.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_REF = re.compile(r"\$\$\{|\$\{(?:([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\})?")


class InterpolationError(ValueError):
    """One string referred to unset variables or held a malformed `${`; `problems` lists each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def expand(text: str, environ: Mapping[str, str]) -> str:
    """Replace every variable reference in `text`; raise InterpolationError naming all failures."""
    if "$" not in text:
        return text
    problems: list[str] = []

    def substitute(match: re.Match[str]) -> str:
        whole = match.group(0)
        if whole == "$${":
            return "${"
        name, operator, default = match.groups()
        if name is None:
            problems.append(f"malformed variable reference in {text!r} "
                            "(use ${NAME}, ${NAME:-default}, or $${ for a literal)")
            return whole
        value = environ.get(name)
        if operator == ":-" and not value:
            return default
        if operator == "-" and value is None:
            return default
        if value is None:
            problems.append(f"environment variable {name} is not set "
                            f"(set it, or give a default: ${{{name}:-...}})")
            return whole
        return value

    result = _REF.sub(substitute, text)
    if problems:
        raise InterpolationError(problems)
    return result


def references(text: str, environ: Mapping[str, str]) -> dict[str, str]:
    """The variables `text` refers to that are set, with their values (to keep them out of errors)."""
    found: dict[str, str] = {}
    for match in _REF.finditer(text):
        name = match.group(1)
        if name is not None and environ.get(name):
            found[name] = environ[name]
    return found
