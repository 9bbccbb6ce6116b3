# VMamba's weight decay policy (docs/training.md): none on the SSM parameters A_logs, Ds and dt_projs_bias, on
# normalisation layers and on biases; decay on every other weight. The schedules inherit it and set the optimiser.
optim_wrapper = dict(
    paramwise_cfg=dict(
        norm_decay_mult=0.0,
        bias_decay_mult=0.0,
        custom_keys={
            '.A_logs': dict(decay_mult=0.0),
            '.Ds': dict(decay_mult=0.0),
            '.dt_projs_bias': dict(decay_mult=0.0),
        }))
