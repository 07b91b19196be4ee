"""The registries of mmifso: no dangling locations, everything exported."""
import importlib
import inspect

import pytest
from mmengine.registry import Registry

import mmifso  # noqa: F401  (registers every module)
from mmifso import registry as mmifso_registry

REGISTRIES = {
    name: reg
    for name, reg in vars(mmifso_registry).items()
    if isinstance(reg, Registry) and reg.scope == 'mmifso'
}


def test_registries_found():
    assert {'MODELS', 'HOOKS', 'TASK_UTILS', 'DATASETS'} <= set(REGISTRIES)


@pytest.mark.parametrize('name', sorted(REGISTRIES))
def test_every_location_imports(name):
    locations = REGISTRIES[name]._locations
    assert locations, f'{name} has no locations: mmengine cannot find its ' \
        'modules from a config that does not import mmifso'
    for location in locations:
        importlib.import_module(location)


@pytest.mark.parametrize('name', sorted(REGISTRIES))
def test_every_registered_object_is_exported(name):
    """Each registered class or function is an attribute of one of its
    registry's locations, so it is registered by importing that package (not
    as a side effect of another module) and users import it from there."""
    reg = REGISTRIES[name]
    modules = [importlib.import_module(loc) for loc in reg._locations]
    missing = [
        key for key, obj in reg.module_dict.items()
        # Objects that tests register (e.g. test criteria) are not mmifso's.
        if obj.__module__.startswith('mmifso.')
        and not any(getattr(m, key, None) is obj for m in modules)
    ]
    assert not missing, (f'{name}: {missing} are registered but not exported '
                         f'from {reg._locations}')


def test_every_hook_is_in_the_hooks_package_all():
    hooks = importlib.import_module('mmifso.engine.hooks')
    registered = mmifso_registry.HOOKS.module_dict
    assert 'AtomicCheckpointHook' in registered
    for key, obj in registered.items():
        if not obj.__module__.startswith('mmifso.'):
            continue  # registered by a test or a tool, not by mmifso
        assert inspect.isclass(obj)
        assert key in hooks.__all__, f'{key} missing in __all__'
        assert getattr(hooks, key) is obj
