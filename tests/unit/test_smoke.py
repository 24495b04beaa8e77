import pytest

from tests.smoke import train_steps


@pytest.mark.slow
def test_tiny_model_loss_falls():
    losses = train_steps(steps=15, batch=4)
    assert losses[-1] < 0.5 * losses[0]
