"""The state of every random generator a run draws from, to save with a checkpoint and to put back (on resume, and
after the speed-ups' warm-up)."""

from __future__ import annotations

import random

import numpy as np
import torch


def rng_state() -> dict:
    """Every generator the run draws from."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
