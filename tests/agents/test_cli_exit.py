"""The `rdquant` entry point ends the process right after the command (no interpreter teardown), so
what it must still do is checked here: exit status, flushed output, atexit handlers."""

from __future__ import annotations

import json
import subprocess
import sys

import typer
from typer.testing import CliRunner

from agents.errors import RunNotFound, user_errors
from agents.loop import open_project
from quantcore.data.sources import load_market

ENTRY = "import atexit; atexit.register(lambda: print('atexit handler ran')); from agents.cli import main; main()"


def _rdquant(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", ENTRY, *args], capture_output=True, text=True, timeout=120)


def test_success_flushes_output_and_runs_atexit_handlers():
    done = _rdquant("factor", "eval", "Mean($close, 5) / $close", "--data", "synthetic:40:300:1", "--json")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[-1] == "atexit handler ran"
    result = json.loads(lines[0])  # the whole JSON object made it out before the hard exit
    assert {"ic", "rank_ic", "icir", "rank_icir"} <= set(result)


def test_errors_keep_their_exit_status_and_message():
    bad = _rdquant("factor", "eval", "Mean($close, 5", "--data", "synthetic:40:300:1")
    assert bad.returncode == 2
    assert "expected ')'" in bad.stderr
    assert bad.stdout.strip().splitlines()[-1] == "atexit handler ran"
    usage = _rdquant("no-such-command")
    assert usage.returncode == 2 and "No such command" in usage.stderr


def test_lightgbm_without_sklearn_leaves_sklearn_importable():
    probe = (
        "import sys; from quantcore.models.lightgbm_import import import_lightgbm_without_sklearn as f; "
        "first = f(); import lightgbm; blocked = 'sklearn' in sys.modules; "
        "import lightgbm.compat as c; import sklearn; "
        "print(first, f(), blocked, c.SKLEARN_INSTALLED, hasattr(lightgbm, 'train'))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    # imported by the call; not again; sklearn never loaded by it; LightGBM's estimators off; training API on
    assert out.stdout.split() == ["True", "False", "False", "False", "True"]
    pre = (
        "import sklearn; from quantcore.models.lightgbm_import import import_lightgbm_without_sklearn as f; print(f())"
    )
    assert (
        subprocess.run([sys.executable, "-c", pre], capture_output=True, text=True, timeout=120).stdout.strip()
        == "False"
    )


def test_the_iteration_log_says_what_a_model_iteration_did():
    """A model iteration replaces the best model or keeps it; it accepts no factor (the log said
    "accepted none" next to "1 of 1 model candidates accepted")."""
    from agents.cli_loop import _Display

    base = {"library": 0, "tokens": 0, "cost_usd": 0.0, "best": {}, "analysis": "why", "seconds": 1.0, "accepted": []}
    with _Display(3) as display:
        display.event("iteration", {**base, "iteration": 1, "direction": "model", "new_best": "csrank_2"})
        display.event("iteration", {**base, "iteration": 2, "direction": "model", "new_best": None})
        display.event("iteration", {**base, "iteration": 3, "direction": "factor", "accepted": ["mom_3_1"]})
    assert display.log == [
        "#1 model: new best model csrank_2; why (1.0s)",
        "#2 model: best model kept; why (1.0s)",
        "#3 factor: accepted mom_3_1; why (1.0s)",
    ]


def test_the_users_mistakes_are_one_line_and_our_bugs_keep_their_traceback():
    """`agents.errors.user_errors`: a run that is not there or a market that does not exist is the
    user's to fix (one line, exit 2); a KeyError of our own making is a bug and must not be dressed up
    as one: it propagates with its traceback."""
    app = typer.Typer()

    @app.command()
    @user_errors
    def probe(kind: str) -> None:
        if kind == "run":
            raise RunNotFound("no run 'abc' in this project")
        if kind == "market":
            load_market("nosuchmarket")
        _ = {}["a key nobody typed"]

    runner = CliRunner()
    run = runner.invoke(app, ["run"])
    assert run.exit_code == 2 and "error: no run 'abc' in this project" in run.output and "Traceback" not in run.output
    market = runner.invoke(app, ["market"])
    assert market.exit_code == 2 and "unknown market 'nosuchmarket'" in market.output
    bug = runner.invoke(app, ["bug"])
    assert bug.exit_code == 1 and isinstance(bug.exception, KeyError) and "error:" not in bug.output


def test_a_label_of_the_past_is_refused_in_one_line(tmp_path):
    done = _rdquant(
        "loop",
        "--budget",
        "1",
        "--data",
        "synthetic:40:300:1",
        "--label",
        "$close/Ref($close, 1) - 1",
        "--root",
        str(tmp_path),
    )
    assert done.returncode == 2 and "reads no future day" in done.stderr and "Traceback" not in done.stderr
    assert open_project(tmp_path).runs() == []  # refused before anything is stored
