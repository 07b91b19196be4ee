"""No function in ``mmifso/`` or ``tools/`` runs over 60 lines unless its
docstring says why.

How a function is measured: every ``def`` (functions, methods, nested
functions; a nested function's lines count in its parent too) is found
with :mod:`ast` (nothing is imported or executed), and its length is the
number of lines from the ``def`` line to its last line, less the lines of
its docstring. Blank and comment lines count: they are part of what a
reader has to get through. Decorators do not count.

A longer function passes only when its docstring has a line that starts
with ``Long on purpose:`` followed by the reason (e.g. ``Long on purpose:
one add_argument per option.``); otherwise it fails, naming every such
function with its length. The fix is usually to split it at a natural seam
into well-named helpers.
"""
import ast
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Trees whose functions are checked.
CHECKED = ('mmifso', 'tools')
MAX_LINES = 60
MARKER = 'Long on purpose:'

Function = Tuple[str, int, int, Optional[str]]


def _docstring_lines(func: ast.AST) -> int:
    body = func.body
    if body and isinstance(body[0], ast.Expr) and isinstance(
            body[0].value, ast.Constant) and isinstance(
                body[0].value.value, str):
        return body[0].end_lineno - body[0].lineno + 1
    return 0


def functions(source: str) -> Iterator[Function]:
    """``(qualified name, line, length, docstring)`` of every function in
    ``source``; the length leaves out the docstring."""

    def walk(node: ast.AST, prefix: str) -> Iterator[Function]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = prefix + child.name
                length = (child.end_lineno - child.lineno + 1 -
                          _docstring_lines(child))
                yield name, child.lineno, length, ast.get_docstring(child)
                yield from walk(child, name + '.')
            elif isinstance(child, ast.ClassDef):
                yield from walk(child, prefix + child.name + '.')
            else:
                yield from walk(child, prefix)

    yield from walk(ast.parse(source), '')


def has_reason(docstring: Optional[str]) -> bool:
    """Whether a docstring has a line starting with :data:`MARKER` followed
    by some reason."""
    return any(
        line.strip().startswith(MARKER)
        and line.strip()[len(MARKER):].strip()
        for line in (docstring or '').splitlines())


def too_long(source: str) -> List[Tuple[str, int, int]]:
    """``(name, line, length)`` of every function over :data:`MAX_LINES`
    whose docstring gives no reason."""
    return [(name, line, length)
            for name, line, length, doc in functions(source)
            if length > MAX_LINES and not has_reason(doc)]


def checked_files() -> List[Path]:
    return sorted(p for tree in CHECKED for p in (ROOT / tree).rglob('*.py'))


def _offenders() -> List[Tuple[str, str, int, int]]:
    return [(path.relative_to(ROOT).as_posix(), name, line, length)
            for path in checked_files()
            for name, line, length in too_long(path.read_text())]


def test_long_functions_state_a_reason():
    found = [f'{path}:{line} {name}: {length} lines'
             for path, name, line, length in _offenders()]
    assert not found, (
        f'functions over {MAX_LINES} lines (docstring not counted) without '
        f'a "{MARKER} <reason>" line in their docstring; split them or '
        'state why:\n' + '\n'.join(found))


# ------------------------------------------------------------------------- #
# The check itself measures what it must.
# ------------------------------------------------------------------------- #
def _function(code_lines: int, doc: str = '', indent: str = '') -> str:
    body = [f'{indent}    x = {i}' for i in range(code_lines - 2)]
    return '\n'.join([f'{indent}def f():'] +
                     ([f'{indent}    """{doc}"""'] if doc else []) + body +
                     [f'{indent}    return x']) + '\n'


@pytest.mark.parametrize('code_lines,doc,flagged', [
    (MAX_LINES, '', False),
    (MAX_LINES + 1, '', True),
    (MAX_LINES, 'Docstring\n\n    lines do not count.\n    ', False),
    (MAX_LINES + 1, 'Why.\n\n    Long on purpose: one flag a line.\n    ',
     False),
    (MAX_LINES + 1, 'Long on purpose:', True),  # a marker with no reason
    (MAX_LINES + 1, 'It is long on purpose.', True),
])
def test_length_and_reason(code_lines, doc, flagged):
    assert bool(too_long(_function(code_lines, doc))) == flagged


def test_methods_and_nested_functions_are_named():
    source = 'class A:\n' + _function(MAX_LINES + 1, indent='    ')
    assert too_long(source) == [('A.f', 2, MAX_LINES + 1)]
    nested = 'def g():\n' + _function(MAX_LINES, indent='    ')
    names = [name for name, *_ in functions(nested)]
    assert names == ['g', 'g.f']
    assert too_long(nested) == [('g', 1, MAX_LINES + 1)]
