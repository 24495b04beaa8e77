from ssd_ds import smoke


def test_tiny_model_loss_falls():
    losses = smoke.main(["--steps", "15", "--batch", "4"])
    assert losses[-1] < 0.5 * losses[0]
