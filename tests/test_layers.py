"""Imports between the packages of mmifso point down the layers.

The layers, top to bottom (``tools`` lives outside the package)::

    apis -> engine -> models -> structures | datasets -> utils | registry

How the check decides: every ``.py`` file under ``mmifso/`` is parsed with
:mod:`ast` (nothing is imported or executed), and every import statement in
it is collected wherever it sits -- module level, inside functions, methods,
``if TYPE_CHECKING`` blocks or ``try`` blocks -- plus
``importlib.import_module('mmifso...')`` / ``__import__`` calls with a
literal name. Relative imports are resolved against the file's package;
``from mmifso import models`` counts as an import of ``mmifso.models``. The
imported module's layer is the top-level sub-package it belongs to
(``mmifso.models.importance.base`` -> ``models``). An import is allowed when
it stays inside the importing file's own top-level sub-package, or when it
reaches a strictly lower layer; an import of a sibling of the same layer
(``structures`` <-> ``datasets``, ``utils`` <-> ``registry``) or of a higher
one fails, and so does ``import mmifso`` anywhere but the package root
(the root imports every layer). ``mmifso/__init__.py`` is the only file
exempt: importing it is what registers every module.

Strings that are not import statements are not imports: the registry's
``locations`` (module names mmengine imports when a type is built) point up
by design and are checked in ``tests/test_registry.py``.
"""
import ast
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / 'mmifso'

#: Rank of each top-level part of mmifso; higher may import lower.
LAYERS = {
    'utils': 0,
    'registry': 0,
    'version': 0,
    'structures': 1,
    'datasets': 1,
    'models': 2,
    'engine': 3,
    'apis': 4,
}


def module_name(path: Path) -> str:
    """``mmifso/models/importance/base.py`` -> ``mmifso.models.importance.
    base``; a package's ``__init__.py`` is the package."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix('').parts)
    if parts[-1] == '__init__':
        parts = parts[:-1]
    return '.'.join(parts)


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module a ``from ... import`` reads from."""
    if not node.level:
        return node.module or ''
    base = module.split('.')
    # A module's own package is its parent; a package's is itself.
    base = base if is_package else base[:-1]
    base = base[:len(base) - (node.level - 1)]
    return '.'.join(base + ([node.module] if node.module else []))


def imports_of(source: str, module: str,
               is_package: bool = False) -> Iterator[Tuple[int, str]]:
    """Every ``(line, imported module)`` of ``source``, at any depth."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(node, module, is_package)
            if target == 'mmifso':
                # ``from mmifso import models``: the sub-packages named.
                for alias in node.names:
                    yield node.lineno, f'mmifso.{alias.name}'
            else:
                yield node.lineno, target
        elif isinstance(node, ast.Call) and node.args and isinstance(
                node.args[0], ast.Constant) and isinstance(
                    node.args[0].value, str):
            func = node.func
            name = getattr(func, 'attr', None) or getattr(func, 'id', None)
            if name in ('import_module', '__import__'):
                yield node.lineno, node.args[0].value


def layer_of(module: str) -> Optional[str]:
    """Top-level part of an mmifso module; ``''`` for the root itself and
    None for modules outside mmifso."""
    parts = module.split('.')
    if parts[0] != 'mmifso':
        return None
    return parts[1] if len(parts) > 1 else ''


def violation(importer: str, imported: str) -> Optional[str]:
    """Why ``importer`` may not import ``imported``; None if it may."""
    own, other = layer_of(importer), layer_of(imported)
    if other is None or own == '':
        return None
    if other == '':
        return (f'{importer} imports the package root mmifso, which imports '
                'every layer; import the module it needs')
    if other == own:
        return None
    for name in (own, other):
        if name not in LAYERS:
            return (f'{name!r} is not in the layer table of '
                    'tests/test_layers.py; add it at its layer')
    if LAYERS[other] < LAYERS[own]:
        return None
    where = 'a sibling layer' if LAYERS[other] == LAYERS[own] else 'upward'
    return f'{importer} imports {imported} ({where}: {own} -> {other})'


def violations(source: str, module: str,
               is_package: bool = False) -> List[str]:
    return [
        f'line {line}: {why}'
        for line, imported in imports_of(source, module, is_package)
        for why in [violation(module, imported)] if why
    ]


def package_files() -> List[Path]:
    return sorted(PACKAGE.rglob('*.py'))


def test_every_file_has_a_layer():
    layers = {layer_of(module_name(p)) for p in package_files()} - {''}
    assert layers <= set(LAYERS), sorted(layers - set(LAYERS))


@pytest.mark.parametrize(
    'path', package_files(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path):
    errors = violations(path.read_text(), module_name(path),
                        path.name == '__init__.py')
    assert not errors, f'{path}:\n' + '\n'.join(errors)


def _function_local_mmifso_imports(source: str, module: str,
                                   is_package: bool) -> List[str]:
    found = []
    for func in ast.walk(ast.parse(source)):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(func):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [_resolve(node, module, is_package)]
            else:
                continue
            found += [f'line {node.lineno}: {n}' for n in names
                      if layer_of(n) is not None]
    return found


@pytest.mark.parametrize(
    'path', package_files(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_function_local_imports_of_mmifso(path):
    """An mmifso import inside a function is how a cycle gets hidden; every
    one goes at module level (third-party lazy imports are allowed)."""
    found = _function_local_mmifso_imports(
        path.read_text(), module_name(path), path.name == '__init__.py')
    assert not found, f'{path}:\n' + '\n'.join(found)


# ------------------------------------------------------------------------- #
# The check itself catches what it must.
# ------------------------------------------------------------------------- #
@pytest.mark.parametrize('module,source', [
    ('mmifso.models.task_modules.x',
     'def f():\n    from mmifso.apis import prune_to_target\n'),
    ('mmifso.models.importance.x',
     'class A:\n    def f(self):\n        from ...engine import hooks\n'),
    ('mmifso.structures.x', 'from mmifso.models.task_modules import x\n'),
    ('mmifso.structures.x', 'from mmifso import models\n'),
    ('mmifso.structures.x', 'import mmifso.datasets.digits\n'),
    ('mmifso.utils.x', 'from ..registry import HOOKS\n'),
    ('mmifso.engine.x', 'import mmifso\n'),
    ('mmifso.models.x',
     'import importlib\nimportlib.import_module("mmifso.engine.hooks")\n'),
    ('mmifso.models.x',
     'from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n'
     '    from mmifso.apis import checks\n'),
])
def test_upward_imports_are_caught(module, source):
    assert violations(source, module)


@pytest.mark.parametrize('module,source,is_package', [
    ('mmifso.apis.x', 'from mmifso.models import importance\n', False),
    ('mmifso.models.importance.base', 'from ..mutators import M\n', False),
    ('mmifso.models.importance', 'from .base import B\n', True),
    ('mmifso.engine.x', 'from mmifso.utils import save_json\n', False),
    ('mmifso.structures.x', 'import torch\nimport json\n', False),
])
def test_downward_imports_pass(module, source, is_package):
    assert not violations(source, module, is_package)


def test_relative_imports_resolve():
    node = ast.parse('from ..mutators import M').body[0]
    assert _resolve(node, 'mmifso.models.importance.base',
                    False) == 'mmifso.models.mutators'
    assert _resolve(node, 'mmifso.models.importance',
                    True) == 'mmifso.models.mutators'


def test_function_local_imports_are_caught():
    source = 'def f():\n    from ..utils import save_json\n'
    assert _function_local_mmifso_imports(source, 'mmifso.models.x', False)
    assert not _function_local_mmifso_imports(
        'def f():\n    import sklearn\n', 'mmifso.datasets.x', False)
