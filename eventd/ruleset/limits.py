"""Resource limits for rule templates: no render may build a huge value or run for long.

The stock sandbox stops escapes, not resource use: `'%0100000000d'|format(1)`,
`'x'|center(10**8)`, `'{:>100000000}'.format(1)`, doubling a string or chaining `**` built
100+ MB or ran for 30 s on the engine's only thread. Every way a template makes a value comes
through here (calls, operators, filters, `~`, loops, output): each checks the size it is about
to build, counts what was built, and checks the time the render has used. Over a limit is a
`LimitError`, a SecurityError, which fails that template for that event and nothing else.
"""

from __future__ import annotations

import functools
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from jinja2.exceptions import SecurityError
from jinja2.utils import _PassArg

#: Characters (or items) of one value a template builds, and of its output.
MAX_VALUE = 1_000_000
#: Characters built by all operations of one render together.
MAX_TOTAL = 10 * MAX_VALUE
#: Seconds one render may take (the templates of one action share them).
MAX_SECONDS = 1.0
#: A format width or precision (`'{:>N}'`, `'%0Nd'`).
MAX_WIDTH = 10_000
#: Bits of an integer a template computes (`**` chains).
MAX_INT_BITS = 100_000

_NUMERIC = re.compile(r"\d+")
_PERCENT = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")


class LimitError(SecurityError):
    """A template went over a resource limit; the message says which."""


class _Budget(threading.local):
    deadline: float | None = None
    used = 0


_budget = _Budget()


def start(seconds: float = MAX_SECONDS) -> bool:
    """Start a render's budget; False when one is already running (an outer render owns it)."""
    if _budget.deadline is not None:
        return False
    _budget.deadline = time.monotonic() + seconds
    _budget.used = 0
    return True


def stop() -> None:
    """End the budget started by start()."""
    _budget.deadline = None
    _budget.used = 0


def check_time() -> None:
    """Raise LimitError once the running render is past its deadline."""
    deadline = _budget.deadline
    if deadline is not None and time.monotonic() > deadline:
        raise LimitError(f"the render took more than {MAX_SECONDS:g} s (the limit for a template)")


def size(value: Any, limit: int = MAX_VALUE) -> int:
    """About how many characters `value` would print as; stops counting past `limit`."""
    kind = type(value)
    if kind is str or kind is bytes or kind is bytearray:
        return len(value)
    if kind is int:
        return int(value.bit_length()) // 3 + 1
    if kind is range:
        return len(value) * 8
    if kind not in (list, tuple, dict, set, frozenset):
        return 8
    total = 0
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is str or kind is bytes:
            total += len(item) + 4
        elif kind is dict:
            total += 2
            stack.extend(item.keys())
            stack.extend(item.values())
        elif kind in (list, tuple, set, frozenset):
            total += 2
            stack.extend(item)
        else:
            total += 8
        if total > limit:
            return total
    return total


def refuse_over(estimate: int, what: str) -> None:
    """Refuse to build `what` when it would be larger than MAX_VALUE."""
    if estimate > MAX_VALUE:
        raise LimitError(f"{what} would be larger than {MAX_VALUE} characters "
                         "(the limit for a template value)")


def built(value: Any, what: str = "a value") -> Any:
    """Check a value just built and count it against the render's total; return it."""
    n = size(value)
    refuse_over(n, what)
    if _budget.deadline is not None:  # outside a render (constant folding at compile): size only
        _budget.used += n
        if _budget.used > MAX_TOTAL:
            raise LimitError(f"the render built more than {MAX_TOTAL} characters in all "
                             "(the limit for a template)")
        check_time()
    return value


def check_int(bits: int, what: str) -> None:
    """Refuse an integer result of more than MAX_INT_BITS bits."""
    if bits > MAX_INT_BITS:
        raise LimitError(f"{what} would have more than {MAX_INT_BITS} bits "
                         "(the limit for a template number)")


def check_format_spec(spec: str) -> None:
    """Refuse a `str.format` field whose width or precision is over MAX_WIDTH."""
    for number in _NUMERIC.findall(spec):
        if len(number) > 6 or int(number) > MAX_WIDTH:
            raise LimitError(f"format width or precision {number[:12]} is over {MAX_WIDTH}")


def check_percent(text: str, args: Any) -> None:
    """Refuse `%`-formatting with a width or precision over MAX_WIDTH (`*` ones included)."""
    star = False
    for match in _PERCENT.finditer(text):
        for part in match.groups():
            if part == "*":
                star = True
            elif part is not None and (len(part) > 6 or int(part) > MAX_WIDTH):
                raise LimitError(f"format width or precision {part[:12]} is over {MAX_WIDTH}")
    if star:
        values = args if isinstance(args, tuple) else (args,)
        if any(type(v) is int and abs(v) > MAX_WIDTH for v in values):
            raise LimitError(f"a `*` format width or precision is over {MAX_WIDTH}")
    refuse_over(len(text) + text.count("%") * largest(args), "the formatted text")


def largest(args: Any) -> int:
    """The size of the largest value a format may insert, each field at most once per `%` or
    `{` of its text: a mapping's `%(a)s` or `{a}` can repeat one value a thousand times."""
    if isinstance(args, Mapping):
        values: Iterable[Any] = list(args.values())
    elif isinstance(args, (tuple, list)):
        values = args
    else:
        return size(args)
    return max((size(v) for v in values), default=0) + 8


def binop(operator: str, left: Any, right: Any) -> None:
    """Check an operator before it runs: what it would build."""
    if operator == "**":
        if type(left) is int and type(right) is int and right > 0 and abs(left) > 1:
            check_int(left.bit_length() * right, "a power")
    elif operator == "*":
        if type(left) is int and type(right) is int:
            check_int(left.bit_length() + right.bit_length(), "a product")
        for seq, times in ((left, right), (right, left)):
            if isinstance(seq, (str, bytes, list, tuple)) and type(times) is int and times > 0:
                refuse_over(size(seq) * times, "a repeated sequence")
    elif operator == "+":
        if isinstance(left, (str, bytes, list, tuple)):
            refuse_over(size(left) + size(right), "a concatenation")
    elif operator == "%" and isinstance(left, str):
        check_percent(left, right)


def concat(*parts: Any) -> str:
    """The `~` operator, sized first."""
    refuse_over(sum(size(p) for p in parts), "a concatenation")
    text = "".join([p if type(p) is str else str(p) for p in parts])
    built(text, "a concatenation")
    return text


def iterate(iterable: Any) -> Iterator[Any]:
    """A `{% for %}` loop's items, checking the time as it goes (an empty body calls nothing)."""
    for item in iterable:
        check_time()
        yield item


def output(pieces: Iterable[str]) -> str:
    """Join a template's output pieces, refusing output over MAX_VALUE."""
    result: list[str] = []
    total = 0
    for piece in pieces:
        total += len(piece)
        refuse_over(total, "the rendered text")
        check_time()
        result.append(piece)
    return "".join(result)


def take(iterable: Iterable[Any], separator: int = 0) -> list[Any]:
    """Materialize an iterable to join it, counting its size (and separators) as it comes."""
    if isinstance(iterable, (list, tuple)):
        refuse_over(size(iterable) + separator * len(iterable), "a joined text")
        return list(iterable)
    items: list[Any] = []
    total = 0
    for item in iterable:
        total += size(item) + separator
        refuse_over(total, "a joined text")
        check_time()
        items.append(item)
    return items


# --- calls of str, bytes and int methods, and of the sandbox's globals --------------------------

def _width(args: tuple[Any, ...], kwargs: Mapping[str, Any], name: str, index: int = 0) -> Any:
    return kwargs.get(name, args[index] if len(args) > index else None)


def _replaced(text: Any, old: Any, new: Any) -> int:
    if not isinstance(old, (str, bytes)) or not isinstance(new, (str, bytes)):
        return 0
    count = len(text) + 1 if not old else text.count(old)
    return len(text) + count * max(0, len(new) - len(old))


#: str, bytes and Markup methods whose result is at most a few times the text's size (case
#: changes, splits, searches, tests, encodings): allowed, their result sized by `built`. Any
#: method not named here or checked in `call` (one a later Python adds) is refused.
_BOUNDED_METHODS = frozenset({
    "capitalize", "casefold", "count", "decode", "encode", "endswith", "find", "hex", "index",
    "isalnum", "isalpha", "isascii", "isdecimal", "isdigit", "isidentifier", "islower",
    "isnumeric", "isprintable", "isspace", "istitle", "isupper", "lower", "lstrip",
    "partition", "removeprefix", "removesuffix", "rfind", "rindex", "rpartition", "rsplit",
    "rstrip", "split", "splitlines", "startswith", "strip", "swapcase", "title", "upper",
    "fromhex", "maketrans", "escape", "unescape", "striptags"})
_CHECKED_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs", "replace",
                              "join", "translate"})


def call(obj: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> tuple[Any, ...]:
    """Check a call before it runs: methods and globals that can build big values from small.
    Returns the arguments to call with (a `join` of an iterator gets it as a sized list)."""
    check_time()
    owner = getattr(obj, "__self__", None)
    name = getattr(obj, "__name__", "")
    if isinstance(owner, (str, bytes)):
        if name not in _BOUNDED_METHODS and name not in _CHECKED_METHODS:
            raise LimitError(f"{type(owner).__name__}.{name[:40]}() is not allowed in "
                             "templates (its result is not bounded)")
        if name == "join" and args and not isinstance(args[0], (list, tuple)):
            # 'y'*200 joining a 990,000-character string built 221 MB: count it as it comes
            args = (take(args[0], len(owner)), *args[1:])
        if name in ("center", "ljust", "rjust", "zfill"):
            width = _width(args, kwargs, "width")
            if type(width) is int:
                refuse_over(width, f"{name}()")
        elif name == "expandtabs":
            tabsize = _width(args, kwargs, "tabsize")
            if type(tabsize) is int:
                tabs = owner.count("\t") if isinstance(owner, str) else owner.count(b"\t")
                refuse_over(len(owner) + tabs * max(tabsize, 0), "expandtabs()")
        elif name == "replace" and len(args) >= 2:
            refuse_over(_replaced(owner, args[0], args[1]), "replace()")
        elif name == "join" and args and isinstance(args[0], (list, tuple)):
            refuse_over(size(args[0]) + len(owner) * len(args[0]), "join()")
        elif name == "translate" and args and isinstance(args[0], dict):
            longest = max((size(v) for v in args[0].values()), default=1)
            refuse_over(len(owner) * max(longest, 1), "translate()")
    elif type(owner) is int and name == "to_bytes":
        length = _width(args, kwargs, "length")
        if type(length) is int:
            refuse_over(length, "to_bytes()")
    elif name == "generate_lorem_ipsum":
        n, most = _width(args, kwargs, "n"), _width(args, kwargs, "max", 3)
        refuse_over((n if type(n) is int else 5) * (most if type(most) is int else 100) * 12,
                    "lipsum()")
    return args


# --- filters -----------------------------------------------------------------------------------

def _center(value: Any, width: Any = 80, *_: Any, **__: Any) -> None:
    if type(width) is int:
        refuse_over(width, "center")


def _indent(value: Any, width: Any = 4, *_: Any, **__: Any) -> None:
    text = str(value) if not isinstance(value, str) else value
    prefix = width if type(width) is int else len(str(width))
    refuse_over(len(text) + (text.count("\n") + 1) * max(prefix, 0), "indent")


def _format(value: Any, *args: Any, **kwargs: Any) -> None:
    check_percent(str(value), kwargs or args)


def _replace(value: Any, old: Any = "", new: Any = "", *_: Any, **__: Any) -> None:
    refuse_over(_replaced(str(value), old, new), "replace")


#: textwrap's work for one wordwrap: it cuts a long word a line at a time, copying the rest
#: each time (about longest word squared / width characters copied: 1e10 was 0.3 s), and
#: spends about 3 us a line; 999,999 characters at width 1 ran 13 s against the 1 s cap
MAX_WRAP_COPIED = 2 * 10**9
MAX_WRAP_LINES = 50_000
_LONGEST_WORD = re.compile(r"\S+")


def _wordwrap(value: Any, width: Any = 79, break_long_words: Any = True,
              wrapstring: Any = None, *_: Any, **__: Any) -> None:
    text, wrap = str(value), len(wrapstring) if isinstance(wrapstring, str) else 1
    columns = max(width if type(width) is int else 79, 1)
    lines = len(text) // columns + 1
    refuse_over(len(text) + lines * wrap, "wordwrap")
    if lines > MAX_WRAP_LINES:
        raise LimitError(f"wordwrap would make more than {MAX_WRAP_LINES} lines")
    if break_long_words:
        longest = max((len(m) for m in _LONGEST_WORD.findall(text)), default=0)
        if longest * longest // columns > MAX_WRAP_COPIED:
            raise LimitError(f"wordwrap of a {longest}-character word at width {columns} "
                             f"would take too long")


def _count(what: str) -> Callable[..., None]:
    def check(value: Any, count: Any = 0, *_: Any, **__: Any) -> None:
        if type(count) is int:
            refuse_over(count, what)
    return check


def _sum(value: Any, attribute: Any = None, start: Any = 0) -> None:
    if not isinstance(start, (int, float)):  # sequences add up in quadratic time
        raise LimitError("sum() of sequences is not allowed in templates (use join)")


_FILTER_CHECKS: dict[str, Callable[..., None]] = {
    "center": _center, "indent": _indent, "format": _format, "replace": _replace,
    "wordwrap": _wordwrap, "batch": _count("batch"), "slice": _count("slice"), "sum": _sum,
}


def _join_filter(func: Callable[..., Any], offset: int) -> Callable[..., Any]:
    @functools.wraps(func)
    def join(*args: Any, **kwargs: Any) -> Any:
        args = list(args)  # type: ignore[assignment]
        separator = kwargs.get("d", args[offset + 1] if len(args) > offset + 1 else "")
        if len(args) > offset and kwargs.get("attribute") is None:
            args[offset] = take(args[offset], len(str(separator)))  # type: ignore[index]
        return built(func(*args, **kwargs), "join")
    return join


def guard_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """The filter, with its output sized and the render's time checked (and inputs, for some)."""
    offset = 1 if _PassArg.from_obj(func) is not None else 0
    if name == "join":
        return _join_filter(func, offset)
    check = _FILTER_CHECKS.get(name)

    @functools.wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        check_time()
        if check is not None and len(args) > offset:
            check(*args[offset:], **kwargs)
        return built(func(*args, **kwargs), name)
    return guarded
