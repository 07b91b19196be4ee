"""A latency target hit on the measured latency: the goal correction of
``LatencyFeedback`` and ``prune_to_target(latency_feedback=...)``. No timed
assertions: the corrections are checked on stated table errors, and the real
measurements of the tiny model only for their bookkeeping."""
import pytest

from helpers import build_algorithm, digits_batch
from mmifso.apis import prune_to_target
from mmifso.models.mutators.latency import LatencyFeedback

# The structure of ``predicted`` measures ``factor x predicted`` (a table
# that is pessimistic below 1, optimistic above) and the selection stops
# exactly at each goal.


@pytest.mark.parametrize('factor', [0.9, 1.15, 1.0])
def test_feedback_reaches_the_measured_target(factor):
    fb = LatencyFeedback(0.5, tol=0.04, approach=0.3)
    assert fb.goal == pytest.approx(0.65)  # short of the target first
    while not fb.done:
        fb.update(fb.goal, factor * fb.goal)
    assert fb.reached
    # Halfway after the first measurement (far from the target), then the
    # constant factor carries the goal to the middle of the accepted band
    # [0.48, 0.5].
    assert fb.history[-1]['measured'] == pytest.approx(0.49)
    assert len(fb.history) == 3
    goals = [h['goal'] for h in fb.history]
    assert goals[1] == pytest.approx((0.65 + 0.49 / factor) / 2)
    assert goals[2] == pytest.approx(0.49 / factor)


def test_feedback_approaches_from_above_when_the_factor_drifts():
    # The table is pessimistic near the unpruned model and optimistic
    # further down: each goal still moves down and the target is met.
    def measured(p):
        return p * (0.9 + 0.6 * (0.65 - p))

    fb = LatencyFeedback(0.5, tol=0.05, max_measurements=8)
    while not fb.done:
        fb.update(fb.goal, measured(fb.goal))
    goals = [h['goal'] for h in fb.history]
    assert goals == sorted(goals, reverse=True)
    assert fb.reached and 0.475 <= fb.history[-1]['measured'] <= 0.5
    assert 'reached' in fb.summary()


def test_feedback_gives_up_after_max_measurements():
    fb = LatencyFeedback(0.5, max_measurements=2)
    fb.update(0.65, 0.99)  # the latency does not follow at all
    assert not fb.done and fb.goal < 0.65
    fb.update(fb.goal, 0.99)
    assert fb.done and not fb.reached
    assert 'not reached after 2 measurements' in fb.summary()


def test_feedback_already_below_the_target():
    fb = LatencyFeedback(0.5)
    fb.update(0.65, 0.45)  # measured far faster than predicted: keep it
    assert fb.done and fb.reached and len(fb.history) == 1
    assert '10% below it' in fb.summary()


def test_feedback_run_prunes_to_each_goal_until_reached():
    # The selection stops at each goal it is given, and the structure
    # measures 0.9 x its predicted ratio: run() is the loop of update().
    pruned_to, fb = [], LatencyFeedback(0.5, tol=0.04)

    def prune_to(goal):
        pruned_to.append(goal)
        return goal, False

    fb.run(prune_to, lambda: (0.9 * pruned_to[-1], 0.0))
    assert fb.reached and len(fb.history) == 3
    assert pruned_to == [h['goal'] for h in fb.history]
    assert [h['predicted'] for h in fb.history] == pruned_to


def test_feedback_run_stops_at_the_floor():
    # Nothing more can be pruned: one measurement, then stop, not reached.
    fb = LatencyFeedback(0.5)
    fb.run(lambda goal: (0.8, True), lambda: (0.8, 0.0))
    assert len(fb.history) == 1 and not fb.reached and not fb.done


def test_feedback_trusts_a_table_the_measurements_agree_with():
    # Measured 2.8 % and 3.8 % off the table with a standard error of 2 %:
    # within agree_z=2 errors, so the goal heads for the aim (halfway
    # first), not for the noisy factor (RetinaNet, docs/benchmarks.md).
    fb = LatencyFeedback(0.5, tol=0.05)
    aim = 0.5 * (1 - 0.025)
    fb.update(0.65, 0.632, se=0.02)
    assert fb.goal == pytest.approx((0.65 + aim) / 2)
    fb.update(fb.goal, fb.goal * 1.038, se=0.02)
    assert fb.goal == pytest.approx(aim)
    # Tried at the aim and still above the target: the factor moves the
    # goal below the aim.
    fb.update(aim, 0.51, se=0.02)
    assert not fb.done and fb.goal == pytest.approx(aim * aim / 0.51)
    # Without the agreement rule (agree_z=0) or with a tight error, the
    # factor of every measurement moves the goal (halfway the first time).
    for kwargs, se in ((dict(agree_z=0), 0.02), ({}, 0.001)):
        fb = LatencyFeedback(0.5, **kwargs)
        fb.update(0.6, 0.6 * 1.038, se=se)
        assert fb.goal == pytest.approx((0.6 + aim / 1.038) / 2)
    assert fb.history[0]['se'] == 0.001


@pytest.mark.parametrize('kwargs, match', [
    (dict(target=1.0), 'target'),
    (dict(target=0.5, tol=0), 'tol'),
    (dict(target=0.5, approach=1), 'approach'),
    (dict(target=0.5, max_measurements=0), 'max_measurements'),
    (dict(target=0.5, rounds=0), 'rounds'),
    (dict(target=0.5, agree_z=-1), r'agree_z must be in \[0, 1000'),
])
def test_feedback_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LatencyFeedback(**kwargs)


def test_prune_to_target_with_measured_feedback(synthetic_path):
    """Real exports and measurements of the tiny model; which structure
    reaches the target depends on the machine's timings, so only the
    bookkeeping is checked."""
    algo = build_algorithm(input_shape=(1, 3, 16, 16))
    res = prune_to_target(
        algo.architecture, algo.mutator, 'mmifso.MagnitudeImportance',
        [digits_batch(4, size=16)], target_latency=0.6, step_fraction=0.1,
        selection=dict(latency_table=synthetic_path),
        latency_feedback=dict(tol=0.05, max_measurements=3))
    hist = res['latency_feedback']
    assert 1 <= len(hist) <= 3
    assert hist[0]['goal'] == pytest.approx(0.6 + 0.3 * 0.4)
    # Pruned to each goal, then measured; the last may stop at the floor.
    assert all(h['predicted'] <= h['goal'] + 1e-9 for h in hist[:-1])
    assert all(h['measured'] > 0 for h in hist)
    goals = [h['goal'] for h in hist]
    assert goals == sorted(goals, reverse=True)
    assert res['measured_latency_ratio'] == hist[-1]['measured']
    assert res['reached'] == (hist[-1]['measured'] <= 0.6)
    assert res['latency_ratio'] == pytest.approx(hist[-1]['predicted'])


def test_prune_to_target_feedback_bad_input(synthetic_path):
    algo = build_algorithm(input_shape=(1, 3, 16, 16))
    args = (algo.architecture, algo.mutator, 'mmifso.MagnitudeImportance',
            [digits_batch(4, size=16)])
    with pytest.raises(ValueError, match='needs target_latency'):
        prune_to_target(*args, target_flops=0.5, latency_feedback=True)
    with pytest.raises(TypeError, match='True or a dict'):
        prune_to_target(*args, target_latency=0.5, latency_feedback='yes',
                        selection=dict(latency_table=synthetic_path))
    # A misspelt option names the ones there are.
    with pytest.raises(TypeError, match=r'options \(tol, .*agree_z\)'):
        prune_to_target(*args, target_latency=0.5,
                        latency_feedback=dict(agreez=2),
                        selection=dict(latency_table=synthetic_path))
    assert all(u.num_alive == u.num_channels for u in algo.mutator.units)

