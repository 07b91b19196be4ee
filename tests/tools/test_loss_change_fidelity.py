"""tools/analysis/loss_change_fidelity.py: the true loss change, the rank
metrics, the criterion names and the JSON it writes."""
import copy
import json

import pytest
import torch

from helpers import (TINY_CLASSIFIER, build_algorithm, digits_batch,
                     load_tool)


@pytest.fixture(scope='module')
def tool():
    return load_tool('analysis', 'loss_change_fidelity.py')


@pytest.fixture(scope='module')
def batches():
    """Two training and two evaluation batches of digits."""
    return ([digits_batch(16, seed=s) for s in (1, 2)],
            [digits_batch(12, seed=s) for s in (3, 4)])


def _meter(tool, algo, batches, lr=0.05):
    train, evals = batches
    optim = dict(optimizer=dict(type='SGD', lr=0.1, momentum=0.9,
                                weight_decay=5e-4))
    return tool.LossChangeMeter(algo, optim, train, evals, lr, seed=0), evals


def _brute_force_loss(arch, batches) -> float:
    """Sample-weighted mean eval-mode loss of a plain (ungated) model."""
    arch.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for b in batches:
            data = arch.data_preprocessor(copy.deepcopy(b), False)
            loss = arch(**data, mode='loss')['loss']
            total += float(loss) * len(b['inputs'])
            count += len(b['inputs'])
    return total / count


def test_r0_is_the_masked_minus_unmasked_loss(tool, batches):
    from mmifso.models.mutators.channel_mutator import strip_gates
    algo = build_algorithm()
    # Non-trivial BN statistics, so eval mode matters.
    for m in algo.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    meter, evals = _meter(tool, algo, batches)
    names = [u.name for u in algo.mutator.units]
    u = names.index('backbone.stages.1.0.conv1')
    base = meter.losses(None, 0)
    assert base[0] == base[1]
    plain = copy.deepcopy(algo.architecture)
    strip_gates(plain)
    ref_full = _brute_force_loss(plain, evals)
    assert base[0] == pytest.approx(ref_full, rel=1e-6)
    effects = []
    for channel in range(algo.mutator.units[u].num_channels):
        masked = meter.losses((u, [channel]), 0)
        assert masked[0] == masked[1]
        # Independently: an ungated copy with the channel's conv row and BN
        # affine zeroed (eval-mode BN then outputs 0, ReLU keeps 0).
        ref = copy.deepcopy(plain)
        block = ref.backbone.stages[1][0]
        with torch.no_grad():
            block.conv1.weight[channel] = 0
            block.bn1.weight[channel] = 0
            block.bn1.bias[channel] = 0
        ref_delta = _brute_force_loss(ref, evals) - ref_full
        assert masked[0] - base[0] == pytest.approx(
            ref_delta, rel=1e-5, abs=1e-7), channel
        effects.append(abs(ref_delta))
    assert max(effects) > 1e-4  # some channel matters: the test can fail


def test_retraining_keeps_the_mask_and_is_repeatable(tool, batches):
    algo = build_algorithm()
    meter, _ = _meter(tool, algo, batches)
    w0 = {k: v.clone() for k, v in algo.state_dict().items()}
    u = 4  # backbone.stages.1.0.conv1
    first = meter.losses((u, [2, 5]), 3)
    mask = algo.mutator.units[u].mask.clone()
    assert mask[[2, 5]].abs().sum() == 0 and mask.sum() == len(mask) - 2
    # Training moved the weights, so the loss changed ...
    assert first[1] != first[0]
    # ... and a second run from w0 repeats it exactly (same data, seed).
    assert meter.losses((u, [2, 5]), 3) == first
    meter.reset()
    for k, v in algo.state_dict().items():
        assert torch.equal(v, w0[k]), k


def test_rank_metrics_known_case(tool):
    # Ranks 1 2 3 4 vs 1 3 2 4: sum d^2 = 2, rho = 1 - 6*2/(4*15) = 0.8;
    # 5 concordant and 1 discordant pair: tau = 4/6.
    m = tool.rank_metrics([0.1, 0.2, 0.3, 0.4], [10., 30., 20., 40.], k=2)
    assert m['spearman'] == pytest.approx(0.8)
    assert m['kendall'] == pytest.approx(2 / 3)
    # Lowest two true: {0, 1}; lowest two predicted: {0, 2}.
    assert m['topk_overlap'] == pytest.approx(0.5)
    assert m['topk_overlap_random'] == pytest.approx(0.5)
    rev = tool.rank_metrics([1., 2., 3., 4., 5.], [5., 4., 3., 2., 1.], k=2)
    assert rev['spearman'] == pytest.approx(-1)
    assert rev['kendall'] == pytest.approx(-1)
    assert rev['topk_overlap'] == 0
    lo, hi = tool.rank_metrics(list(range(20)),
                               [i + (i % 3) * 4 for i in range(20)],
                               k=4)['spearman_ci95']
    assert -1 < lo < hi < 1
    const = tool.rank_metrics([1., 2., 3.], [0., 0., 0.], k=1)
    assert const['spearman'] is None and const['topk_overlap'] is None


def test_unknown_criterion_lists_the_valid_names(tool):
    with pytest.raises(KeyError) as e:
        tool.parse_criteria(['NoSuchImportance'])
    msg = str(e.value)
    assert 'NoSuchImportance' in msg
    for name in ('IFSOImportance', 'GroupFisherImportance',
                 'MagnitudeImportance'):
        assert name in msg
    with pytest.raises(KeyError, match='registered criteria'):
        tool.parse_criteria(['mmifso.DemoInput'])  # registered, no criterion
    with pytest.raises(ValueError, match='key=value'):
        tool.parse_criteria(['TaylorImportance:variant'])
    parsed = tool.parse_criteria(
        ['mmifso.TaylorImportance', 'TaylorImportance:variant=snip',
         'SOSPHImportance:first_order_sign=-1'])
    assert parsed == [
        ('TaylorImportance', dict(type='mmifso.TaylorImportance')),
        ('TaylorImportance:variant=snip',
         dict(type='mmifso.TaylorImportance', variant='snip')),
        ('SOSPHImportance:first_order_sign=-1',
         dict(type='mmifso.SOSPHImportance', first_order_sign=-1))
    ]
    assert {c for c, _ in tool.parse_criteria(None)} == set(
        tool.registered_criteria())


def test_sampling_takes_whole_blocks(tool):
    algo = build_algorithm()
    unit = algo.mutator.units[0]
    unit.blocks = [[0, 1], [2, 3]] + [[c] for c in range(4,
                                                         unit.num_channels)]
    unit.block_ids = torch.tensor([0, 0, 1, 1] +
                                  list(range(2, unit.num_channels - 2)))
    unit.prune([2, 3])
    blocks = tool.removable_blocks(algo.mutator)
    assert (0, [0, 1]) in blocks and (0, [2, 3]) not in blocks
    # Unit 0: block [0, 1] and 12 single channels; the others: every channel.
    assert len(blocks) == 1 + unit.num_channels - 4 + sum(
        u.num_channels for u in algo.mutator.units[1:])
    drawn = tool.sample_blocks(algo.mutator, 7, seed=3)
    assert drawn == tool.sample_blocks(algo.mutator, 7, seed=3)
    assert len(drawn) == 7 and all(b in blocks for b in drawn)


CONFIG = '''
default_scope = 'mmpretrain'
custom_imports = dict(imports=['mmifso'], allow_failed_imports=False)
model = {model!r}
train_dataloader = dict(
    batch_size=16, num_workers=0,
    dataset=dict(type='mmifso.DigitsDataset', split='train',
                 pipeline=[dict(type='PackInputs')]),
    sampler=dict(type='DefaultSampler', shuffle=True))
optim_wrapper = dict(
    optimizer=dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=5e-4))
'''


def test_json_and_plots(tool, tmp_path):
    from mmengine.registry import init_default_scope

    from mmifso.registry import MODELS
    init_default_scope('mmpretrain')
    model = MODELS.build(copy.deepcopy(TINY_CLASSIFIER))
    ckpt = str(tmp_path / 'tiny.pth')
    torch.save(dict(state_dict=model.state_dict(), meta={}), ckpt)
    cfg = tmp_path / 'tiny_cfg.py'
    cfg.write_text(CONFIG.format(model=TINY_CLASSIFIER))
    out = tmp_path / 'out' / 'fid.json'
    criteria = ['MagnitudeImportance', 'TaylorImportance',
                'GradFlowImportance:kind=grasp']
    tool.main([
        str(cfg), ckpt, '--criteria', *criteria, '--out',
        str(out), '--num-samples', '8', '--retrain-steps', '2',
        '--eval-batches', '1', '--score-batches', '1', '--topk', '3'
    ])
    data = json.loads(out.read_text())
    assert data['num_samples'] == 8 and data['retrain_steps'] == 2
    assert data['k'] == 3 and data['num_removable'] == 56
    assert set(data['criteria']) == {
        'MagnitudeImportance', 'TaylorImportance', 'GradFlowImportance:'
        'kind=grasp'}
    for label, r in data['criteria'].items():
        for key in ('spearman', 'kendall', 'topk_overlap', 'num_samples',
                    'retrain_steps', 'k', 'seeds', 'score_seconds',
                    'spearman_r0', 'plot'):
            assert key in r, (label, key)
        assert r['num_samples'] == 8 and r['k'] == 3
        assert -1 <= r['spearman'] <= 1 and -1 <= r['kendall'] <= 1
        assert (out.parent / r['plot']).is_file()
    assert len(data['samples']) == 8
    for s in data['samples']:
        assert set(s) >= {'unit', 'channels', 'true_delta', 'delta_r0',
                          'predictions'}
        assert set(s['predictions']) == set(data['criteria'])
    # The rank metrics are those of the raw per-sample data.
    true = [s['true_delta'] for s in data['samples']]
    pred = [s['predictions']['TaylorImportance'] for s in data['samples']]
    assert data['criteria']['TaylorImportance']['spearman'] == \
        pytest.approx(tool.rank_metrics(true, pred, 3)['spearman'])


def _tiny_config(tmp_path, weight_decay=5e-4):
    """TINY_CLASSIFIER with SiLU (a twice-differentiable loss) on 8x8
    digits: a converged retrain in about a second."""
    from mmengine.registry import init_default_scope

    from mmifso.registry import MODELS
    init_default_scope('mmpretrain')
    arch = copy.deepcopy(TINY_CLASSIFIER)
    arch['backbone']['act_cfg'] = dict(type='SiLU')
    model = MODELS.build(copy.deepcopy(arch))
    ckpt = str(tmp_path / 'tiny.pth')
    torch.save(dict(state_dict=model.state_dict(), meta={}), ckpt)
    cfg = tmp_path / 'tiny_cfg.py'
    cfg.write_text(CONFIG.replace(
        "split='train',", "split='train', image_size=8,").replace(
            'weight_decay=5e-4', f'weight_decay={weight_decay}').format(
                model=arch))
    return str(cfg), ckpt


def test_converged_mode(tool, tmp_path):
    """The machinery of --retrain converged: refusals (nothing written),
    the evidence of every retrain, the control, the JSON layout.

    From a random initialisation only a strongly regularised objective
    converges within a test's budget (it shrinks the tiny net towards zero,
    so the truths are tiny); the retraining maths itself is checked against
    closed forms in tests/apis/test_fidelity.py."""
    from mmifso.apis.fidelity import NotConvergedError
    cfg, ckpt = _tiny_config(tmp_path)
    out = tmp_path / 'conv' / 'fid.json'
    exact = ('IFSOImportance:inverse=cg,cg_iters=50,first_order=True,'
             'second_order_mm=True,abs_per_batch=False')
    common = [cfg, ckpt, '--retrain', 'converged', '--fit-samples', '16',
              '--num-samples', '4', '--topk', '2', '--grad-tol', '1e-5',
              '--out', str(out), '--criteria', 'MagnitudeImportance', exact,
              'IFSOImportance:neumann_order=3']
    # A random-init checkpoint is no stationary point of J: refused, with
    # the gradient norm and the fix.
    with pytest.raises(NotConvergedError, match='--converge-start'):
        tool.main(common)
    assert not out.exists()
    # A tolerance that cannot be reached in the budget: refused.
    with pytest.raises(NotConvergedError, match='--max-iter'):
        tool.main(common + ['--converge-start', '--grad-tol', '1e-13',
                            '--max-iter', '2'])
    assert not out.exists()
    data = tool.main(common + ['--converge-start', '--lam', '2e-2'])
    assert json.loads(out.read_text())['retrain'] == 'converged'
    assert data['objective']['lam'] == 2e-2
    assert data['objective']['converge_start']['converged']
    control = data['control']['retrain'][0]
    assert control['converged'] and control['distance'] < 1e-3
    for s in data['samples']:
        assert s['grad_norm'] <= 1e-5
        assert s['true_delta'] == pytest.approx(
            s['loss'] - data['control']['objective'], abs=1e-12)
    ifso = data['criteria'][exact]
    assert ifso['last_residual'] < 1e-3 and ifso['lam'] == 2e-2
    for key in ('spearman', 'spearman_data', 'spearman_r0', 'kendall',
                'topk_overlap', 'spearman_ci95', 'score_seconds'):
        assert key in ifso
    neumann = data['criteria']['IFSOImportance:neumann_order=3']
    assert neumann.get('diverged') or neumann['last_residual'] < 1


def test_retrain_params_freezes_all_but_the_match(tool):
    algo = build_algorithm(input_shape=(1, 3, 8, 8))
    assert tool.freeze_except(algo, r'^head\.') == ['head.fc.weight']
    trainable = [n for n, p in algo.architecture.named_parameters()
                 if p.requires_grad]
    assert trainable == ['head.fc.weight']
    with pytest.raises(ValueError, match='matches no conv/linear weight.*'
                       'backbone.conv1.weight'):
        tool.freeze_except(algo, 'no_such_layer')
    # BatchNorm parameters are not conv/linear weights: never retrained.
    with pytest.raises(ValueError, match='matches no conv/linear'):
        tool.freeze_except(algo, r'bn1\.weight$')
    with pytest.raises(SystemExit):
        tool.parse_args(['c.py', 'k.pth', '--retrain-params', '^head'])
    with pytest.raises(SystemExit):
        tool.parse_args(['c.py', 'k.pth', '--retrain', 'converged',
                         '--retrain-params', '(unclosed'])


def test_converged_mode_retraining_the_classifier_only(tool, tmp_path):
    """With the classifier alone retrained, J is strictly convex in ``w``
    for every mask: from a random initialisation and the config's own
    weight decay every retrain converges to a tight tolerance, and the
    criteria score the same ``w`` (IFSO's CG solves a system of the head's
    size to a small residual). (``J*`` may still fall when a channel goes:
    the features change with the mask.)"""
    cfg, ckpt = _tiny_config(tmp_path)
    out = tmp_path / 'head' / 'fid.json'
    exact = ('IFSOImportance:direction=single,inverse=cg,cg_iters=200,'
             'cg_tol=1e-12,first_order=True,second_order_mm=True,'
             'abs_per_batch=False')
    data = tool.main([
        cfg, ckpt, '--retrain', 'converged', '--converge-start',
        '--retrain-params', r'^head\.', '--fit-samples', '32',
        '--num-samples', '4', '--topk', '2', '--grad-tol', '1e-9',
        '--out', str(out), '--criteria', exact, 'TaylorImportance'
    ])
    assert data['retrain_params'] == r'^head\.'
    assert data['objective']['lam'] == 5e-4  # the config's weight decay
    assert all(s['grad_norm'] <= 1e-9 for s in data['samples'])
    assert all(s['distance'] > 0 for s in data['samples'])
    assert data['criteria'][exact]['last_residual'] < 1e-6
    head = data['objective']['converge_start']
    assert head['converged'] and head['distance'] > 0


def test_command_line_refusal_is_one_line(tmp_path):
    """From the shell, a refusal is ``tool: Error: message`` with exit
    status 1 and no traceback."""
    import os
    import sys

    from helpers import ROOT, run_command
    cfg, ckpt = _tiny_config(tmp_path)
    out = tmp_path / 'fid.json'
    proc = run_command([
        sys.executable,
        os.path.join(ROOT, 'tools', 'analysis', 'loss_change_fidelity.py'),
        cfg, ckpt, '--retrain', 'converged', '--retrain-params',
        'no_such_layer', '--num-samples', '2', '--fit-samples', '8',
        '--criteria', 'MagnitudeImportance', '--out', str(out)
    ], dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 1
    assert 'Traceback' not in proc.stderr
    assert ('tools/analysis/loss_change_fidelity.py: ValueError: '
            "--retrain-params 'no_such_layer' matches no conv/linear "
            'weight') in proc.stderr
    assert not out.exists()
