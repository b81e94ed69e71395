"""`python -m quantcore.cli ...`: the quant core's commands without the agent loop's imports."""

from quantcore.cli import app

app()
