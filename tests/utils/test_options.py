"""``check_choice``: one wording for every enumerated option;
``KeyValueAction``: KEY=VALUE items that stop with a usage error when
malformed, in every tool that takes them; ``merge_cfg_options``: overrides
that would change nothing are refused."""
import argparse

import pytest
from mmengine.config import Config, DictAction

from helpers import load_tool, warnings_logged
from mmifso.models import ChannelMutator
from mmifso.utils import (KeyValueAction, ParseTimeVariableError,
                          add_cfg_options, check_choice, merge_cfg_options)


def test_check_choice_returns_a_valid_value():
    assert check_choice('gate', 'input', ('weight', 'input')) == 'input'


@pytest.mark.parametrize('choices, allowed', [
    (('mean', ), "'mean'"),
    (('weight', 'input'), "'weight' or 'input'"),
    (('acts', 'flops', 'none'), "'acts', 'flops' or 'none'"),
])
def test_check_choice_names_every_choice(choices, allowed):
    with pytest.raises(ValueError) as err:
        check_choice('opt', 'bad', choices)
    assert str(err.value) == f"opt must be {allowed}, got 'bad'"


def test_an_option_of_the_package_uses_it():
    with pytest.raises(ValueError, match="gate must be 'weight' or 'input', "
                       "got 'output'"):
        ChannelMutator(gate='output')


# ---------------------------------------------------------------------------
# KeyValueAction: KEY=VALUE items of --cfg-options and the tools' settings.

ITEMS = ['model.head.num_classes=5', 'lrs=[0.1,0.01]', 'name=a=b', 'empty=']


def _parse_with(action, items):
    parser = argparse.ArgumentParser(prog='tool')
    parser.add_argument('--cfg-options', nargs='+', action=action)
    return parser.parse_args(['--cfg-options', *items]).cfg_options


def test_key_value_action_parses_as_dict_action():
    parsed = _parse_with(KeyValueAction, ITEMS)
    assert parsed == _parse_with(DictAction, ITEMS)
    assert parsed == {
        'model.head.num_classes': 5,
        'lrs': [0.1, 0.01],
        'name': 'a=b',
        'empty': ''
    }


def test_dict_action_alone_fails_with_a_traceback():
    """What the tools did before: an unpacking error, not a usage error."""
    with pytest.raises(ValueError, match='not enough values to unpack'):
        _parse_with(DictAction, ['a=1', 'key'])


def test_add_cfg_options(capsys):
    parser = argparse.ArgumentParser(prog='tool')
    add_cfg_options(parser)
    parser.print_help()
    assert '--cfg-options KEY=VALUE [KEY=VALUE ...]' in capsys.readouterr().out
    assert parser.parse_args([]).cfg_options is None
    args = parser.parse_args(['--cfg-options', *ITEMS])
    assert args.cfg_options == _parse_with(DictAction, ITEMS)
    with pytest.raises(SystemExit):
        parser.parse_args(['--cfg-options', 'key'])


def test_key_value_action_names_the_bad_item(capsys):
    with pytest.raises(SystemExit) as err:
        _parse_with(KeyValueAction, ['a=1', 'key'])
    assert err.value.code == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith('usage: tool')
    assert stderr.rstrip().endswith(
        "tool: error: argument --cfg-options: expected KEY=VALUE, got 'key'")


@pytest.fixture
def train_tool(monkeypatch):
    # parse_args exports --local-rank unless the launcher did.
    monkeypatch.setenv('LOCAL_RANK', '0')
    return load_tool('train.py')


def test_train_tool_refuses_cfg_option_without_value(train_tool, capsys):
    with pytest.raises(SystemExit) as err:
        train_tool.parse_args(['cfg.py', '--cfg-options', 'a=1', 'key'])
    assert err.value.code == 2
    assert ("error: argument --cfg-options: expected KEY=VALUE, got 'key'"
            in capsys.readouterr().err)


def test_train_tool_parses_good_cfg_options_as_before(train_tool):
    args = train_tool.parse_args(['cfg.py', '--cfg-options', *ITEMS])
    assert args.cfg_options == _parse_with(DictAction, ITEMS)


def test_benchmark_refuses_prune_variant_without_value(capsys):
    benchmark = load_tool('analysis', 'benchmark.py')
    args = benchmark.parse_args(['--prune-variant', 'interval=12'])
    assert args.prune_variant == {'interval': 12}
    with pytest.raises(SystemExit) as err:
        benchmark.parse_args(['--prune-variant', 'interval'])
    assert err.value.code == 2
    assert ("error: argument --prune-variant: expected KEY=VALUE, got "
            "'interval'" in capsys.readouterr().err)


def test_compare_hook_settings_names_the_variant(capsys):
    tool = load_tool('analysis', 'compare_hook_settings.py')
    argv = [
        'prune.py', 'finetune.py', 'ckpt.pth', '--variant', 'base',
        '--variant', 'fast', 'interval=12', 'selection.round_to=8'
    ]
    assert tool.parse_args(argv).variants == {
        'base': {},
        'fast': {
            'interval': 12,
            'selection.round_to': 8
        }
    }
    with pytest.raises(SystemExit):
        tool.parse_args(argv + ['--variant', 'slow', 'interval'])
    assert ("error: argument --variant slow: expected KEY=VALUE, got "
            "'interval'" in capsys.readouterr().err)


# ---------------------------------------------------------------------------
# merge_cfg_options: an override of a variable the file substituted where it
# is used (and no one reads afterwards) would silently change nothing.

VARIABLES_CONFIG = """
target_flops = 0.5
pretrained_ckpt = 'base.pth'
lr_ratio = 0.1
hook = dict(type='PruningHook', interval=10)
load_from = pretrained_ckpt
optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.2 * lr_ratio))
custom_hooks = [
    dict(hook, target_flops=target_flops, cost_power=0.5),
    dict(type='EMAHook', momentum=0.5)
]
"""


@pytest.fixture
def variables_cfg(tmp_path):
    path = tmp_path / 'prune.py'
    path.write_text(VARIABLES_CONFIG)
    return Config.fromfile(str(path))


@pytest.mark.parametrize('key, value, example', [
    # Fields named like the variable are preferred to other equal values
    # (the 0.5s of cost_power and the EMA momentum).
    ('target_flops', 0.3, 'custom_hooks.0.target_flops=0.3'),
    ('pretrained_ckpt', 'x.pth', 'load_from=x.pth'),
    # A dict variable is extended where it is used.
    ('hook.interval', 5, 'custom_hooks.0.interval=5'),
])
def test_merge_cfg_options_refuses_substituted_variables(
        variables_cfg, key, value, example):
    before = variables_cfg.to_dict()
    with pytest.raises(ParseTimeVariableError) as err:
        merge_cfg_options(variables_cfg, {key: value})
    assert f'--cfg-options "{example}"' in str(err.value)
    assert f"{key.split('.')[0]!r} is a variable of the config file" in str(
        err.value)
    assert variables_cfg.to_dict() == before  # nothing merged


def test_merge_cfg_options_merges_runner_fields(variables_cfg):
    merge_cfg_options(variables_cfg, {
        'custom_hooks.0.target_flops': 0.3,
        'load_from': 'x.pth'
    })
    assert variables_cfg.custom_hooks[0].target_flops == 0.3
    assert variables_cfg.load_from == 'x.pth'
    merge_cfg_options(variables_cfg, None)  # no options: nothing to do


def test_merge_cfg_options_warns_where_the_value_is_not_found(
        variables_cfg):
    # lr_ratio entered a product: no field holds 0.1, so it may be read by
    # something else; merged, with a warning.
    with warnings_logged() as logged:
        merge_cfg_options(variables_cfg, {'lr_ratio': 0.5})
    assert variables_cfg.lr_ratio == 0.5
    assert any("'lr_ratio' is not a field the Runner reads" in message
               for message in logged), logged


def test_train_tool_refuses_a_variable_override(train_tool, tmp_path):
    path = tmp_path / 'prune.py'
    path.write_text(VARIABLES_CONFIG)
    with pytest.raises(SystemExit) as err:
        train_tool.main([str(path), '--cfg-options', 'target_flops=0.3'])
    assert str(err.value).startswith(
        "tools/train.py: ParseTimeVariableError: --cfg-options "
        "target_flops=0.3 would change nothing")
