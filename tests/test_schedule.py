import numpy as np
import pytest

from ferops.schedule import make_optimizer, one_cycle_rate
from ferops.training import TrainConfig


def test_one_cycle_warms_up_linearly_then_decays_to_zero():
    rates = [one_cycle_rate(step, total_steps=100, warmup_steps=20, peak=0.1) for step in range(101)]
    assert rates[0] == pytest.approx(0.004)  # 4 % of the peak
    assert rates[10] == pytest.approx(0.004 + 0.096 / 2)
    assert max(rates) == pytest.approx(0.1) and int(np.argmax(rates)) == 20
    assert rates[60] == pytest.approx(0.05)
    assert rates[99] == pytest.approx(0.1 / 80) and rates[100] == 0  # the last step of 100
    assert np.all(np.diff(rates[20:]) < 0)
    assert one_cycle_rate(0, total_steps=10, warmup_steps=0, peak=0.1) == pytest.approx(0.1)


@pytest.mark.parametrize("decay_norm_and_bias", [True, False])
def test_weight_decay_can_spare_batchnorm_and_biases(decay_norm_and_bias):
    import keras

    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.BatchNormalization()(keras.layers.Dense(2)(inputs)))
    config = TrainConfig(optimizer="sgd", lr=1.0, momentum=0.0, weight_decay=0.5, schedule="constant",
                         warmup_fraction=0, decay_norm_and_bias=decay_norm_and_bias)
    optimizer = make_optimizer(config, steps_per_epoch=1)
    for variable in model.trainable_variables:
        variable.assign(np.ones(variable.shape, dtype=np.float32))
    # A zero gradient leaves only the decay: each decayed weight goes from 1 to 1 - lr * 0.5.
    optimizer.apply_gradients([(np.zeros(v.shape, np.float32), v) for v in model.trainable_variables])
    after = {v.path.split("/")[-1]: float(np.asarray(v).ravel()[0]) for v in model.trainable_variables}
    assert after["kernel"] == pytest.approx(0.5)
    for name in ("bias", "gamma", "beta"):
        assert after[name] == pytest.approx(0.5 if decay_norm_and_bias else 1.0), name
