"""TorchPruningImportance returns Torch-Pruning's own scores.

The references call Torch-Pruning exactly as its documentation shows, on a
plain (ungated) copy of the model: its own DependencyGraph and groups,
``loss.backward()`` for Taylor, the per-sample ``backward`` +
``accumulate_grad`` loop for Hessian.
"""
import copy

import pytest
import torch
import torch_pruning as tp

from helpers import build_algorithm, digits_batch, random_prune
from mmifso.apis import export_model, prune_to_target
from mmifso.models.importance import ScoringContext, TorchPruningImportance
from mmifso.models.mutators import strip_gates
from mmifso.registry import TASK_UTILS

SHAPE = (1, 3, 16, 16)


@pytest.fixture()
def algo():
    algo = build_algorithm(input_shape=SHAPE)
    algo.train()
    # One SGD step so that weights are not at their initialisation and
    # every parameter holds a .grad (scoring must leave it alone).
    opt = torch.optim.SGD(algo.parameters(), lr=0.1, momentum=0.9)
    data = algo.data_preprocessor(digits_batch(8, seed=1, size=16), True)
    loss, _ = algo.parse_losses(algo(**data, mode='loss'))
    loss.backward()
    opt.step()
    return algo


def plain_copy(model):
    """Ungated copy of a gated architecture with the same weights."""
    plain = copy.deepcopy(model)
    strip_gates(plain)
    return plain


def tp_groups(plain, names):
    graph = tp.DependencyGraph().build_dependency(
        plain,
        example_inputs=torch.rand(SHAPE),
        forward_fn=lambda m, x: m(x, mode='tensor'))
    groups = []
    for name in names:
        module = plain.get_submodule(name)
        fn = graph.get_pruner_of_module(module).prune_out_channels
        groups.append(
            graph.get_pruning_group(
                module, fn, list(range(fn.__self__.get_out_channels(module)))))
    return groups


def loss_of(model, batch):
    data = model.data_preprocessor(batch, True)
    loss, _ = model.parse_losses(model(**data, mode='loss'))
    return loss


def assert_scores_equal(ours, ref, rtol=1e-5):
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b.double(), rtol=rtol, atol=1e-7)


def test_magnitude_equals_tp(algo):
    arch = algo.architecture
    names = [u.name for u in algo.mutator.units]
    ref_imp = tp.importance.GroupMagnitudeImportance()
    ref = [ref_imp(g) for g in tp_groups(plain_copy(arch), names)]
    imp = TorchPruningImportance(kind='magnitude')
    assert not imp.requires_data
    ours = imp.score(ScoringContext(arch, algo.mutator))
    assert_scores_equal(ours, ref)


def test_taylor_equals_tp_with_accumulated_grads(algo):
    arch = algo.architecture
    names = [u.name for u in algo.mutator.units]
    batches = [digits_batch(8, seed=s, size=16) for s in (2, 3)]
    plain = plain_copy(arch)
    plain.zero_grad(set_to_none=True)
    for b in batches:  # TP's examples: backward once per batch
        loss_of(plain, b).backward()
    ref_imp = tp.importance.GroupTaylorImportance()
    ref = [ref_imp(g) for g in tp_groups(plain, names)]
    ours = TorchPruningImportance(kind='taylor').score(
        ScoringContext(arch, algo.mutator), batches)
    # The normaliser ('mean') removes the factor between the summed and the
    # mean gradient.
    assert_scores_equal(ours, ref, rtol=1e-4)


def hessian_reference(plain, batch, names, fixed: bool):
    plain.zero_grad(set_to_none=True)
    data = plain.data_preprocessor(batch, True)
    feats = plain.extract_feat(data['inputs'])
    target = torch.cat([s.gt_label for s in data['data_samples']])
    losses = torch.nn.functional.cross_entropy(
        plain.head(feats), target, reduction='none')
    ref_imp = tp.importance.GroupHessianImportance()
    sq = None
    for loss in losses:  # TP's documented per-sample loop
        plain.zero_grad()
        loss.backward(retain_graph=True)
        ref_imp.accumulate_grad(plain)
        grads = [p.grad.clone() for p in plain.parameters()]
        sq = [g * g for g in grads] if sq is None else [
            s + g * g for s, g in zip(sq, grads)]
    if fixed:  # correct mean of squared per-sample gradients
        ref_imp.zero_grad()
        for p, s in zip(plain.parameters(), sq):
            p.grad = s / len(losses)
    return [ref_imp(g) for g in tp_groups(plain, names)], losses


@pytest.mark.parametrize('fixed', [False, True])
def test_hessian_equals_tp(algo, fixed):
    arch = algo.architecture
    names = [u.name for u in algo.mutator.units]
    batch = digits_batch(6, seed=4, size=16)
    ref, _ = hessian_reference(plain_copy(arch), batch, names, fixed)
    imp = TorchPruningImportance(
        kind='hessian',
        hessian_accumulation='fixed' if fixed else 'as_shipped')
    ctx = ScoringContext(arch, algo.mutator)
    ours = imp.score(ctx, [batch])
    assert_scores_equal(ours, ref, rtol=1e-4)
    # compute() does not consume the accumulated statistics.
    assert_scores_equal(imp.compute(ctx), ours)


def test_hessian_as_shipped_counts_only_the_last_sample(algo):
    """TP 1.6.1's accumulate_grad bug, as documented in the criterion."""
    arch = algo.architecture
    ctx = ScoringContext(arch, algo.mutator)
    batch = digits_batch(6, seed=4, size=16)
    shipped = TorchPruningImportance(kind='hessian').score(ctx, [batch])
    fixed = TorchPruningImportance(
        kind='hessian', hessian_accumulation='fixed').score(ctx, [batch])
    assert not all(torch.allclose(a, b) for a, b in zip(shipped, fixed))
    # Fixed accumulation over the last sample alone (BN statistics of the
    # whole batch) gives the shipped scores.
    names = [u.name for u in algo.mutator.units]
    plain = plain_copy(arch)
    data = plain.data_preprocessor(batch, True)
    target = torch.cat([s.gt_label for s in data['data_samples']])
    losses = torch.nn.functional.cross_entropy(
        plain.head(plain.extract_feat(data['inputs'])), target,
        reduction='none')
    plain.zero_grad(set_to_none=True)
    losses[-1].backward()
    for p in plain.parameters():
        p.grad = p.grad * p.grad
    ref_imp = tp.importance.GroupHessianImportance()
    ref = [ref_imp(g) for g in tp_groups(plain, names)]
    assert_scores_equal(shipped, ref, rtol=1e-4)


@pytest.mark.parametrize('kind', ['magnitude', 'taylor'])
def test_masked_model_scores_equal_tp_on_pruned_model(algo, kind):
    """On a masked model TP sees only the alive channels, as after physical
    pruning: equal to TP on the exported model."""
    arch, mutator = algo.architecture, algo.mutator
    random_prune(mutator, 0.4, seed=0)
    batch = digits_batch(8, seed=5, size=16)
    ours = TorchPruningImportance(kind=kind).score(
        ScoringContext(arch, mutator), [batch] if kind == 'taylor' else [])
    pruned, _ = export_model(arch, mutator)
    pruned.train()
    if kind == 'taylor':
        pruned.zero_grad(set_to_none=True)
        loss_of(pruned, batch).backward()
        ref_imp = tp.importance.GroupTaylorImportance()
    else:
        ref_imp = tp.importance.GroupMagnitudeImportance()
    groups = tp_groups(pruned, [u.name for u in mutator.units])
    for unit, score, group in zip(mutator.units, ours, groups):
        alive = unit.alive
        assert torch.all(score[~alive] == 0)
        torch.testing.assert_close(
            score[alive], ref_imp(group).double(), rtol=1e-4, atol=1e-7)


def snapshot(algo):
    return dict(
        params={k: v.detach().clone() for k, v in algo.named_parameters()},
        grad_ids={k: id(v.grad) for k, v in algo.named_parameters()},
        grads={k: v.grad.clone() for k, v in algo.named_parameters()
               if v.grad is not None},
        buffers={k: v.clone() for k, v in algo.named_buffers()},
        modes={k: m.training for k, m in algo.named_modules()})


@pytest.mark.parametrize('kind', ['magnitude', 'taylor', 'hessian'])
def test_no_side_effects(algo, kind):
    random_prune(algo.mutator, 0.3, seed=1)
    before = snapshot(algo)
    assert before['grads'], 'the fixture should leave grads to protect'
    ctx = ScoringContext(algo.architecture, algo.mutator)
    imp = TASK_UTILS.build(dict(type='mmifso.TorchPruningImportance',
                                kind=kind))
    imp.score(ctx, [digits_batch(4, seed=6, size=16)])
    after = snapshot(algo)
    for part in before:
        assert before[part].keys() == after[part].keys()
        for k in before[part]:
            a, b = before[part][k], after[part][k]
            same = a == b if part in ('modes', 'grad_ids') else \
                torch.equal(a, b)
            assert same, (part, k)
    assert all(not u.mask.requires_grad for u in algo.mutator.units)


@pytest.mark.parametrize('kind', ['magnitude', 'taylor'])
def test_runner_free_prune_step(algo, kind):
    arch, mutator = algo.architecture, algo.mutator
    batches = [digits_batch(8, seed=7, size=16)]
    res = prune_to_target(
        arch, mutator, dict(type='mmifso.TorchPruningImportance', kind=kind),
        batches, target_flops=0.7, step_fraction=0.2)
    assert res['flops_ratio'] <= 0.7
    assert res['steps'] >= 1
    pruned, _ = export_model(arch, mutator)
    arch.eval()
    pruned.eval()
    x = torch.rand(2, *SHAPE[1:])
    with torch.no_grad():
        torch.testing.assert_close(
            pruned(x, mode='tensor'), arch(x, mode='tensor'),
            rtol=1e-4, atol=1e-5)


def test_state_dict_round_trip(algo):
    ctx = ScoringContext(algo.architecture, algo.mutator)
    batch = digits_batch(4, seed=8, size=16)
    imp = TorchPruningImportance(kind='hessian')
    imp.update(ctx, batch, seed=0)
    resumed = TorchPruningImportance(kind='hessian')
    resumed.load_state_dict(imp.state_dict())
    assert_scores_equal(resumed.compute(ctx), imp.compute(ctx))


def test_bad_arguments():
    with pytest.raises(ValueError, match='kind'):
        TorchPruningImportance(kind='obdc')
    with pytest.raises(ValueError, match='hessian_accumulation'):
        TorchPruningImportance(kind='hessian', hessian_accumulation='exact')


def test_hessian_needs_a_classifier():
    from tiny import TinyNet, tiny_batch, tiny_mutator
    model = TinyNet().float()
    mutator = tiny_mutator(model)
    imp = TorchPruningImportance(kind='hessian')
    with pytest.raises(ValueError, match='per-sample'):
        imp.update(ScoringContext(model, mutator),
                   tiny_batch(4, dtype=torch.float32))
