import pytest
import torch

from ssd_ds.loss import ssd_loss
from ssd_ds.model import build_model
from ssd_ds.model_config import cpu_small
from ssd_ds.step import SSDTrainStep


@pytest.mark.slow
def test_training_step_has_no_graph_breaks():
    cfg = cpu_small(num_classes=5)
    step = SSDTrainStep(build_model(cfg), ssd_loss)
    A = cfg.anchors.num_anchors
    images = torch.randn(2, 3, cfg.input_size, cfg.input_size)
    loc_t = torch.randn(2, A, 4)
    labels_t = torch.randint(0, 5, (2, A))
    explanation = torch._dynamo.explain(step)(images, loc_t, labels_t)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
