# IFSO pruning settings shared by every classification prune config.
# Variables only (no runner setting is defined here): a prune config lists
# this file after its model's config in `_base_` and builds its model and
# pruning hook from them, so a default changed here changes every
# classification prune config. A prune config adds its own architecture,
# demo-input size, FLOPs target and pruning interval:
#
#   model = dict(_base_.ifso_model, _delete_=True, architecture=architecture)
#   model['mutator']['demo_input']['input_shape'] = input_shape
#   custom_hooks = [
#       dict(_base_.ifso_hook, target_flops=target_flops, interval=interval)
#   ]

# The masked model. Every unit keeps at least one channel; a unit with
# frozen parameters is an error (classifiers train every layer).
ifso_model = dict(
    type='mmifso.PruningAlgorithm',
    mutator=dict(
        type='mmifso.ChannelMutator',
        demo_input=dict(type='mmifso.DemoInput'),
        min_channels=1,
        frozen='error'))

# The settings of the IFSO release: one channel per step, scored on two
# batches (lam=None: IFSO's lambda is the optimizer's weight decay), cost
# normalised by activations^0.5; flops_90.pth ... flops_10.pth are written
# on the way (those above the target, plus the target's) and training stops
# at the target.
ifso_hook = dict(
    type='mmifso.PruningHook',
    importance=dict(
        type='mmifso.IFSOImportance',
        lam=None,
        inverse='neumann',
        neumann_order=0,
        hvp='exact'),
    channels_per_step=1,
    score_batches=2,
    cost='acts',
    cost_power=0.5,
    save_thresholds=(0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1),
    stop_at_target=True)
