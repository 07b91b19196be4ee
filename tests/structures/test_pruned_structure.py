"""The structure file format: make, save, load and validate (the
structure_file fixture is in tests/conftest.py)."""
import json

import pytest

from helpers import build_algorithm, random_prune
from mmifso.structures import (STRUCTURE_FORMAT, StructureMismatchError,
                               load_structure, make_structure, save_structure)


def test_make_structure_lists_the_pruned_channels():
    algo = build_algorithm(input_shape=(1, 3, 16, 16))
    unit = algo.mutator.units[0]
    unit.prune([0, 2])
    structure = make_structure(algo.mutator, dict(flops=1.0))
    assert structure['format'] == STRUCTURE_FORMAT
    assert structure['demo_input'] == algo.mutator.demo_input.to_dict()
    assert structure['resources'] == dict(flops=1.0)
    entries = {u['name']: u for u in structure['units']}
    assert set(entries) == {u.name for u in algo.mutator.units}
    assert entries[unit.name] == dict(
        name=unit.name, num_channels=unit.num_channels, pruned=[0, 2])
    assert all(not u['pruned'] for n, u in entries.items() if n != unit.name)


def test_save_and_load_round_trip(tmp_path):
    algo = build_algorithm(input_shape=(1, 3, 16, 16))
    random_prune(algo.mutator, 0.3)
    structure = make_structure(algo.mutator)
    path = str(tmp_path / 'structure.json')
    save_structure(structure, path)
    assert load_structure(path) == json.loads(json.dumps(structure))
    assert not [p for p in tmp_path.iterdir() if p.name.endswith('.tmp')]


# --------------------------------------------------------------------------- #
# Bad input
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize('broken', ['truncated', 'format', 'version',
                                    'missing'])
def test_broken_structure_file(tmp_path, structure_file, broken):
    text = open(structure_file).read()
    path = tmp_path / 'structure.json'
    if broken == 'truncated':
        path.write_text(text[:len(text) // 2])
        error = StructureMismatchError
        match = 'is not valid JSON .*corrupted or truncated: export it again'
    elif broken == 'format':
        path.write_text(json.dumps(dict(units=[])))
        error, match = StructureMismatchError, 'is not an mmifso structure'
    elif broken == 'version':
        path.write_text(text.replace('"version": 1', '"version": 99'))
        error, match = StructureMismatchError, 'structure version 99'
    else:
        error, match = FileNotFoundError, 'create it with tools/export_pruned'
    with pytest.raises(error, match=match):
        load_structure(str(path))
