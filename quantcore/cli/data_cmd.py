"""`rdquant data ...`: synthesise, import and inspect markets."""

import typer

data_app = typer.Typer(help="Market data: synthesise, import, inspect.", no_args_is_help=True)
