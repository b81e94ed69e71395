"""Portfolio construction: risk models, a one-period mean-variance optimiser, and a daily policy."""

from quantcore.portfolio.errors import OptimizerConfigError, PortfolioError, RiskModelError
from quantcore.portfolio.optimizer import (
    OptimizationResult,
    OptimizerConfig,
    ProblemCache,
    Solver,
    Status,
    optimize_weights,
)
from quantcore.portfolio.policy import AlphaScaling, OptimizedPolicy, PolicyStep, PolicyStrategy, daily_returns
from quantcore.portfolio.riskmodel import (
    CovarianceRisk,
    FactorRisk,
    FactorRiskModel,
    Risk,
    ShrinkageCovariance,
    ShrinkageTarget,
)

__all__ = [
    "OptimizerConfigError",
    "PortfolioError",
    "RiskModelError",
    "OptimizationResult",
    "OptimizerConfig",
    "ProblemCache",
    "Solver",
    "Status",
    "optimize_weights",
    "CovarianceRisk",
    "FactorRisk",
    "FactorRiskModel",
    "Risk",
    "ShrinkageCovariance",
    "ShrinkageTarget",
    "AlphaScaling",
    "OptimizedPolicy",
    "PolicyStep",
    "PolicyStrategy",
    "daily_returns",
]
