"""mu^2-SGD (Dahan & Levy, ICML 2024, "Weight for Robustness"): double momentum.

Worker half (:class:`CorrectedMomentum`), STORM-style corrected momentum computed with the
*same* batch at the current and the previous query point:

    d_t = g(x_t; xi_t) + (1 - beta_t) (d_{t-1} - g(x_{t-1}; xi_t)),   beta_t = max(1/t, beta_min)

Server half (:class:`Mu2SGD`), anytime averaging with weights alpha_t = t (Levy 2023;
Dahan & Levy 2024, Algorithm 1), where d_hat_t is the aggregate of the workers' d_t's, all
computed at the query point x_t:

    w_{t+1} = w_t - lr * alpha_t * d_hat_t                                  (step_rule: paper)
    x_{t+1} = (alpha_{1:t} x_t + alpha_{t+1} w_{t+1}) / alpha_{1:t+1}
            = (1 - gamma) x_t + gamma w_{t+1},   gamma = 2 / (t + 2)

so the query point x_t is the t-weighted average of w_1 .. w_t (w_1 = x_1 = the initial model).
The server's model (what it sends, reports and gathers) is x; w is its private state.
Because the step carries alpha_t = t, the query point moves by about lr * t / 2 * d_hat late in
a run, and its lr must be much smaller than plain SGD's (digits MLP, 300 steps, CTMA under
sign-flip: lr 0.01 reached 0.967 accuracy, lr 0.1 diverged). ``step_rule: unweighted`` is our earlier variant,
w_{t+1} = w_t - lr * d_hat_t (alpha only in the average), kept for comparison.
"""

from __future__ import annotations

import numpy as np
import torch

from byzsgd.optim.estimators import GradientEstimator, GradientOracle


class CorrectedMomentum(GradientEstimator):
    def __init__(self, beta_min: float = 0.0) -> None:
        if not 0 <= beta_min <= 1:
            raise ValueError(f"beta_min={beta_min} must be in [0, 1]")
        self.beta_min = beta_min
        self.t = 0
        self.previous_point: torch.Tensor | None = None
        self.momentum: torch.Tensor | None = None

    def beta(self) -> float:
        return max(1.0 / self.t, self.beta_min)

    def __call__(self, oracle: GradientOracle, point: torch.Tensor, batch: np.ndarray) -> tuple[torch.Tensor, float]:
        self.t += 1
        gradient, loss = oracle.gradient(point, batch)
        if self.momentum is None:
            estimate = gradient
        else:
            previous, _ = oracle.gradient(self.previous_point, batch)
            estimate = gradient + (1.0 - self.beta()) * (self.momentum - previous)
        self.previous_point = point.detach().clone()
        self.momentum = estimate
        return estimate, loss


class Mu2SGD:
    """The server half; ``beta_min`` belongs to the workers and is accepted here so that one
    ``optimizer.params`` section configures both halves."""

    estimator = CorrectedMomentum

    STEP_RULES = ("paper", "unweighted")

    def __init__(
        self,
        lr: float,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        beta_min: float = 0.0,
        step_rule: str = "paper",
    ) -> None:
        if momentum:
            raise ValueError(f"momentum={momentum}: mu2sgd keeps its own momentum at the workers; leave it at 0")
        if weight_decay < 0:
            raise ValueError(f"weight_decay={weight_decay} must be >= 0")
        if not 0 <= beta_min <= 1:
            raise ValueError(f"beta_min={beta_min} must be in [0, 1]")
        if step_rule not in self.STEP_RULES:
            raise ValueError(f"step_rule={step_rule!r} must be one of {', '.join(self.STEP_RULES)}")
        self.lr = lr
        self.step_rule = step_rule
        self.weight_decay = weight_decay
        self.t = 1  # index of the current query point x_t (and iterate w_t); alpha_t = t
        self.anchor: torch.Tensor | None = None  # w_t

    def step(self, params: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        if self.anchor is None:
            self.anchor = params.clone()
        if self.weight_decay:
            grad = grad + self.weight_decay * self.anchor
        alpha = float(self.t) if self.step_rule == "paper" else 1.0
        self.anchor = self.anchor - self.lr * alpha * grad  # w_{t+1}
        gamma = 2.0 / (self.t + 2)  # alpha_{t+1} / alpha_{1:t+1} = (t + 1) / ((t + 1)(t + 2) / 2)
        self.t += 1
        return (1.0 - gamma) * params + gamma * self.anchor
