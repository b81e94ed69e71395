"""The `rdquant` command line (typer + rich). Sub-commands live in one module each."""

from __future__ import annotations

import typer

from quantcore.cli.backtest_cmd import backtest_command
from quantcore.cli.data_cmd import data_app
from quantcore.cli.factor_cmd import factor_app
from quantcore.cli.features_cmd import features_command
from quantcore.cli.run_cmd import run_command

app = typer.Typer(
    name="rdquant",
    help="rdquant: an autonomous quant-research factory on a fast compiled quant core.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(data_app, name="data")
app.add_typer(factor_app, name="factor")
app.command("features")(features_command)
app.command("backtest")(backtest_command)
app.command("run")(run_command)


def main() -> None:
    app()
