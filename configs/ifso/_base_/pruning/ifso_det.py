# IFSO pruning settings shared by every detection prune config.
# Variables only (no runner setting is defined here): a prune config lists
# this file after its detector's config in `_base_` and builds its model and
# pruning hook from them, so a default changed here changes every detection
# prune config. A prune config adds its own architecture, demo-input size
# (FLOPs are counted at that size), FLOPs target and pruning interval:
#
#   model = dict(_base_.ifso_model, _delete_=True, architecture=architecture)
#   model['mutator']['demo_input']['input_shape'] = input_shape
#   custom_hooks = [
#       dict(_base_.ifso_hook, target_flops=target_flops, interval=interval)
#   ]
#
# (added to `_base_.custom_hooks` where the detector has hooks of its own,
# such as EMA).

# The masked model: DetDemoInput builds real DetDataSamples for the
# analysis. Units whose parameters are still frozen are left out with a
# warning, not an error.
ifso_model = dict(
    type='mmifso.PruningAlgorithm',
    mutator=dict(
        type='mmifso.ChannelMutator',
        demo_input=dict(type='mmifso.DetDemoInput'),
        frozen='skip'))

# One channel per step, scored on two batches (IFSO's lambda is the
# optimizer's weight decay); the PruningHook's defaults otherwise.
ifso_hook = dict(
    type='mmifso.PruningHook',
    importance=dict(type='mmifso.IFSOImportance'),
    channels_per_step=1,
    score_batches=2)
