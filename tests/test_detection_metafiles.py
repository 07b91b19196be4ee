"""Every detector folder of configs/ifso/detection has a metafile.yml that
names its own configs, claims no COCO result (none has been measured) and
whose FLOPs entry is the prune config's target times the unpruned count."""
from pathlib import Path

import pytest
import yaml
from mmengine.config import Config

ROOT = Path(__file__).resolve().parents[1]
DET_DIR = ROOT / 'configs' / 'ifso' / 'detection'
FOLDERS = sorted(p.name for p in DET_DIR.iterdir()
                 if p.is_dir() and not p.name.startswith(('_', '.')))


@pytest.mark.parametrize('folder', FOLDERS)
def test_detection_metafile(folder):
    meta = yaml.safe_load((DET_DIR / folder / 'metafile.yml').read_text())
    collections = {c['Name'] for c in meta['Collections']}
    [model] = meta['Models']
    assert model['In Collection'] in collections
    assert model['Weights'] is None
    assert Path(model['Config']).stem == model['Name']
    assert Path(
        model['Config']).parent == Path('configs/ifso/detection') / folder
    data = model['Metadata']
    for key in ('Pruning Config', 'Deploy Config'):
        assert (ROOT / data[key]).is_file(), data[key]
    assert (ROOT / model['Config']).is_file()
    for result in model['Results']:
        assert 'Metrics' not in result  # nothing measured on COCO yet
    prune = Config.fromfile(ROOT / data['Pruning Config'])
    [hook] = [h for h in prune.custom_hooks if 'PruningHook' in h['type']]
    assert data['Target FLOPs Ratio'] == hook['target_flops']
    assert isinstance(data['Unpruned FLOPs'], int)
    assert isinstance(data['Unpruned Parameters'], int)
    assert data['FLOPs'] == int(data['Unpruned FLOPs'] *
                                data['Target FLOPs Ratio'])
