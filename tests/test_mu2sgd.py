"""mu^2-SGD: the worker's corrected momentum and the server's anytime averaging."""

import numpy as np
import pytest
import torch

from byzsgd.optim import OPTIMIZERS, make_estimator, make_optimizer
from byzsgd.optim.mu2sgd import CorrectedMomentum, Mu2SGD
from byzsgd.registry import ConfigError
from byzsgd.runner import run_experiment
from tests.conftest import make_config


class Quadratic:
    """f(x) = ||x||^2 / 2 plus an optional batch-dependent linear term, recording every call."""

    def __init__(self, noise: dict[int, np.ndarray] | None = None) -> None:
        self.noise = noise or {}
        self.calls: list[tuple[np.ndarray, int]] = []

    def gradient(self, vector, batch):
        key = int(batch[0])
        self.calls.append((vector.numpy().copy(), key))
        shift = torch.from_numpy(self.noise[key]) if key in self.noise else 0.0
        return vector.clone() + shift, 0.0


def drive(oracle, steps: int, lr: float, beta_min: float = 0.0, start=None, step_rule: str = "paper"):
    """One worker and the server: returns the query points x_1 .. x_steps, the worker's d_t's and x_{steps+1}."""
    estimator, server = CorrectedMomentum(beta_min), Mu2SGD(lr=lr, beta_min=beta_min, step_rule=step_rule)
    x = torch.tensor([3.0, -2.0, 0.5], dtype=torch.float64) if start is None else start
    points, estimates = [], []
    for t in range(steps):
        d, _ = estimator(oracle, x, np.array([t]))
        points.append(x.clone())
        estimates.append(d.clone())
        x = server.step(x, d)
    return points, estimates, x


def test_three_steps_of_the_papers_update_by_hand():
    """Scalar f(x; xi_t) = x^2/2 + n_t x (gradient x + n_t), lr 0.1, x_1 = w_1 = 1, alpha_t = t,
    beta_t = 1/t, noise n = (0.5, -0.2, 0.1). By hand:
    t=1: d_1 = 1 + 0.5 = 1.5;                              w_2 = 1 - 0.1*1*1.5 = 0.85;
         x_2 = (1*1 + 2*0.85) / 3 = 0.9
    t=2: d_2 = (0.9 - 0.2) + (1/2)(1.5 - (1 - 0.2)) = 1.05;  w_3 = 0.85 - 0.1*2*1.05 = 0.64;
         x_3 = (3*0.9 + 3*0.64) / 6 = 0.77
    t=3: d_3 = (0.77 + 0.1) + (2/3)(1.05 - (0.9 + 0.1)) = 0.87 + 0.1/3;
         w_4 = 0.64 - 0.1*3*d_3 = 0.369;  x_4 = (6*0.77 + 4*0.369) / 10 = 0.6096"""
    noise = {0: np.array([0.5]), 1: np.array([-0.2]), 2: np.array([0.1])}
    points, estimates, final = drive(Quadratic(noise), 3, lr=0.1, start=torch.tensor([1.0], dtype=torch.float64))
    np.testing.assert_allclose([p.item() for p in points] + [final.item()], [1.0, 0.9, 0.77, 0.6096], rtol=1e-12)
    np.testing.assert_allclose([d.item() for d in estimates], [1.5, 1.05, 0.87 + 0.1 / 3], rtol=1e-12)


def test_unweighted_step_rule_drops_alpha_from_the_step_only():
    noise = {0: np.array([0.5]), 1: np.array([-0.2])}
    points, estimates, final = drive(
        Quadratic(noise), 2, lr=0.1, start=torch.tensor([1.0], dtype=torch.float64), step_rule="unweighted"
    )
    # w_2 = 1 - 0.1*1.5 = 0.85, x_2 = 0.9 as above; d_2 = 1.05; w_3 = 0.85 - 0.1*1.05 = 0.745,
    # x_3 = (3*0.9 + 3*0.745) / 6 = 0.8225.
    np.testing.assert_allclose([p.item() for p in points] + [final.item()], [1.0, 0.9, 0.8225], rtol=1e-12)


def test_unknown_step_rule_is_a_config_error():
    with pytest.raises(ConfigError, match="step_rule='nesterov' must be one of paper, unweighted"):
        make_config(optimizer={"name": "mu2sgd", "lr": 0.01, "params": {"step_rule": "nesterov"}})


@pytest.mark.parametrize("step_rule", ["paper", "unweighted"])
def test_noiseless_momentum_is_the_true_gradient_and_x_is_the_t_weighted_average_of_the_iterates(step_rule):
    lr, steps = 0.01 if step_rule == "paper" else 0.3, 12
    points, estimates, final = drive(Quadratic(), steps, lr, step_rule=step_rule)
    for x_t, d_t in zip(points, estimates):
        torch.testing.assert_close(d_t, x_t, rtol=0, atol=1e-12)  # grad f(x) = x
    # Independently: w_1 = x_1, w_{t+1} = w_t - lr * alpha_t * grad f(x_t); x_t = sum_s s w_s / sum_s s.
    iterates = [points[0]]
    for t, x_t in enumerate(points, start=1):
        iterates.append(iterates[-1] - lr * (t if step_rule == "paper" else 1) * x_t)
    for t, x_t in enumerate(points + [final], start=1):
        weights = torch.arange(1, t + 1, dtype=torch.float64)
        average = (weights[:, None] * torch.stack(iterates[:t])).sum(0) / weights.sum()
        torch.testing.assert_close(x_t, average, rtol=1e-12, atol=1e-12)


def test_corrected_momentum_evaluates_the_same_batch_at_both_points():
    rng = np.random.default_rng(0)
    noise = {t: rng.normal(size=3) for t in range(6)}
    oracle = Quadratic(noise)
    points, estimates, _ = drive(oracle, 6, lr=0.1)
    # Calls: step 1 one gradient; step t > 1 at x_t then at x_{t-1}, both with batch t.
    assert [key for _, key in oracle.calls] == [0] + [t for t in range(1, 6) for _ in range(2)]
    for t in range(1, 6):
        np.testing.assert_array_equal(oracle.calls[2 * t - 1][0], points[t].numpy())
        np.testing.assert_array_equal(oracle.calls[2 * t][0], points[t - 1].numpy())
    # d_t = g(x_t; xi_t) + (1 - 1/t)(d_{t-1} - g(x_{t-1}; xi_t)), recomputed by hand.
    d = points[0].numpy() + noise[0]
    for t in range(1, 6):
        beta = 1.0 / (t + 1)
        d = points[t].numpy() + noise[t] + (1 - beta) * (d - (points[t - 1].numpy() + noise[t]))
        np.testing.assert_allclose(estimates[t].numpy(), d, rtol=1e-12)


def test_beta_is_floored_at_beta_min():
    estimator = CorrectedMomentum(beta_min=0.25)
    betas = []
    for t in range(6):
        estimator(Quadratic(), torch.zeros(2, dtype=torch.float64), np.array([t]))
        betas.append(estimator.beta())
    assert betas == [1.0, 0.5, pytest.approx(1 / 3), 0.25, 0.25, 0.25]


def test_mu2sgd_is_selected_from_the_config_on_both_sides():
    config = make_config(optimizer={"name": "mu2sgd", "lr": 0.1, "params": {"beta_min": 0.1}})
    assert isinstance(make_optimizer(config.optimizer), Mu2SGD)
    estimator = make_estimator(config.optimizer)
    assert isinstance(estimator, CorrectedMomentum) and estimator.beta_min == 0.1
    assert type(make_estimator(make_config().optimizer)) is not CorrectedMomentum
    assert "mu2sgd" in OPTIMIZERS


def test_mu2sgd_with_heavy_ball_momentum_is_a_config_error():
    with pytest.raises(ConfigError, match="momentum=0.9"):  # at load time, whatever the protocol
        make_config(optimizer={"name": "mu2sgd", "momentum": 0.9})
    with pytest.raises(ConfigError, match="momentum"):
        make_config(protocol="ps", nodes={"n_ps": 1, "f_ps": 0}, optimizer={"name": "mu2sgd", "momentum": 0.9})


@pytest.mark.parametrize("protocol", ["ps", "byzsgd"])
def test_mu2sgd_with_ctma_trains_under_signflip(protocol, tmp_path):
    nodes = {"n_ps": 1, "f_ps": 0} if protocol == "ps" else {}
    config = make_config(
        protocol=protocol,
        nodes=nodes,
        optimizer={"name": "mu2sgd", "lr": 0.01},  # the paper's step carries alpha_t = t: a small lr
        aggregator={"name": "ctma", "params": {"base": "median"}},
        attack={"name": "signflip", "params": {"scale": 4.0}},
        output_dir=str(tmp_path),
    )
    rows = run_experiment(config).rows
    assert rows[-1]["step"] == 60 and rows[-1]["test_acc"] > 0.8
