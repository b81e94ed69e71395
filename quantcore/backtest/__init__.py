"""Daily backtest: an exchange (prices, costs, limits), an account, strategies and the simulator loop."""

from quantcore.backtest.account import Account
from quantcore.backtest.errors import BacktestError, SignalError
from quantcore.backtest.exchange import CostModel, Exchange
from quantcore.backtest.run import backtest_scores, benchmark_returns, trading_range
from quantcore.backtest.simulate import (
    REPORT_COLUMNS,
    align_signal,
    equal_weight_benchmark,
    instrument_benchmark,
    simulate,
)
from quantcore.backtest.strategy import DropoutOrders, Strategy, TargetWeights, TopkDropout, WeightStrategy

__all__ = [
    "Account",
    "BacktestError",
    "SignalError",
    "CostModel",
    "Exchange",
    "REPORT_COLUMNS",
    "align_signal",
    "equal_weight_benchmark",
    "instrument_benchmark",
    "simulate",
    "DropoutOrders",
    "Strategy",
    "TargetWeights",
    "TopkDropout",
    "WeightStrategy",
    "backtest_scores",
    "benchmark_returns",
    "trading_range",
]
