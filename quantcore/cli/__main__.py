"""`python -m quantcore.cli ...`: the quant core's commands without the agent loop's imports."""

from quantcore.cli import app
from quantcore.cli._common import run_and_exit

run_and_exit(app)
