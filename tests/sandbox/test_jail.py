"""The bwrap jail (issue 18, item 1 groundwork): real jailed interpreters, no mocks.

Each test starts `sys.executable` through `jail_argv` and checks from outside what it could and
could not do: read the bound market, not a canary elsewhere, write only its experiment folder, reach
no listener on 127.0.0.1, see only its own PID namespace, and die with its parent."""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sandbox.jail import Jail, Layer, jail_argv, jail_capabilities

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="bwrap jails are Linux only")


@pytest.fixture(scope="module")
def capabilities():
    return jail_capabilities()


@pytest.fixture(scope="module", autouse=True)
def _needs_jail(capabilities):
    probe = capabilities[Layer.JAIL]
    if not probe.available:
        pytest.skip(f"the bwrap jail cannot run here: {probe.why} (bwrap: {capabilities[Layer.BWRAP].why})")


@pytest.fixture
def jail(tmp_path: Path) -> Jail:
    (tmp_path / "experiment").mkdir()
    market = tmp_path / "market"
    market.mkdir()
    (market / "prices.csv").write_text("date,close\n2024-01-02,101.5\n")
    return Jail.for_this_interpreter(experiment_dir=tmp_path / "experiment", market_dir=market)


def run_jailed(jail: Jail, code: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    argv = jail_argv(jail, [sys.executable, "-c", textwrap.dedent(code)])
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_imports_numpy_and_reads_the_market(jail: Jail):
    done = run_jailed(
        jail,
        f"""
        import numpy, sandbox.worker
        print(numpy.arange(4).sum(), open({str(jail.market_dir / "prices.csv")!r}).read().splitlines()[1])
    """,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["6", "2024-01-02,101.5"]
    assert done.stderr == ""


def test_cannot_read_a_canary_outside_the_binds(jail: Jail, tmp_path_factory):
    canary = tmp_path_factory.mktemp("outside") / "canary.txt"
    canary.write_text("secret")
    done = run_jailed(
        jail,
        f"""
        for path in ({str(canary)!r}, "/etc/passwd", "/etc/hostname", {str(Path.home() / ".bashrc")!r}):
            try:
                open(path).read()
            except (FileNotFoundError, PermissionError) as e:
                print(type(e).__name__)
            else:
                print("READ", path)
    """,
    )
    assert done.returncode == 0, done.stderr
    assert "READ" not in done.stdout
    assert len(done.stdout.split()) == 4


def test_writes_only_inside_the_experiment_folder(jail: Jail, tmp_path: Path):
    outside = [
        jail.market_dir / "new.csv",
        jail.market_dir / "prices.csv",
        tmp_path / "beside.txt",
        Path("/tmp/rdquant-jail-write.txt"),
        Path(sys.prefix) / "planted.pth",
    ]
    done = run_jailed(
        jail,
        f"""
        for path in {[str(p) for p in outside]!r}:
            try:
                open(path, "a").write("x")
            except OSError as e:
                print(type(e).__name__)
            else:
                print("WROTE", path)
        open("result.txt", "w").write("inside")  # the working directory is the experiment folder
    """,
    )
    assert done.returncode == 0, done.stderr
    assert "WROTE" not in done.stdout
    assert len(done.stdout.split()) == len(outside)
    assert (jail.experiment_dir / "result.txt").read_text() == "inside"
    assert (jail.market_dir / "prices.csv").read_text() == "date,close\n2024-01-02,101.5\n"
    assert not any(p.exists() for p in [outside[0], *outside[2:]])


def test_no_tcp_connection_to_a_local_listener(jail: Jail):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.5)
        port = listener.getsockname()[1]
        done = run_jailed(
            jail,
            f"""
            import socket
            try:
                socket.create_connection(("127.0.0.1", {port}), timeout=2).sendall(b"leak")
            except OSError as e:
                print(type(e).__name__)
            else:
                print("CONNECTED")
        """,
        )
        with pytest.raises(TimeoutError):
            listener.accept()
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ConnectionRefusedError"  # its own loopback, with nothing listening


def test_sees_only_its_own_pid_namespace(jail: Jail):
    done = run_jailed(
        jail,
        f"""
        import os
        pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
        print(os.getpid(), os.path.exists("/proc/{os.getpid()}"), pids)
    """,
    )
    assert done.returncode == 0, done.stderr
    pid, parent_visible, pids = done.stdout.split(maxsplit=2)
    assert int(pid) <= 2  # bwrap's init is 1, the command 2
    assert parent_visible == "False"
    assert eval(pids) == [1, 2]


def test_dies_with_its_parent(jail: Jail):
    # An intermediate python starts the jailed sleep, reports the jailed process's host PID, then is
    # SIGKILLed: --die-with-parent (PR_SET_PDEATHSIG) must take the jail down with it.
    argv = jail_argv(jail, [sys.executable, "-c", "import time; time.sleep(60)"])
    starter = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import subprocess, sys, time; p = subprocess.Popen({argv!r}); print(p.pid, flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        bwrap_pid = int(starter.stdout.readline())
        # wait for the jailed sleep itself: a parent killed while bwrap still sets the namespace up is
        # another case (the worker it was starting then finds its channel closed and exits)
        deadline = time.monotonic() + 20
        while not _running(bwrap_pid, b"time.sleep(60)") and time.monotonic() < deadline:
            time.sleep(0.05)
        jailed = _descendants(bwrap_pid)
        assert _running(bwrap_pid, b"time.sleep(60)"), "the jailed sleep never started"
        # each process by pid and start time: a pid the kernel hands to a newcomer is not the jail's
        procs = {p: _started(p) for p in [bwrap_pid, *jailed]}
        starter.kill()
        starter.wait()
        deadline = time.monotonic() + 10
        while any(_alive(p, t) for p, t in procs.items()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(p, t) for p, t in procs.items()), "a jailed process outlived its parent"
    finally:
        starter.kill()
        starter.wait()


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _descendants(pid: int) -> list[int]:
    found = []
    for child in _children(pid):
        found += [child, *_descendants(child)]
    return found


def _running(pid: int, marker: bytes) -> bool:
    """Whether a descendant of `pid` runs a command line holding `marker`."""
    for child in _descendants(pid):
        try:
            if marker in Path(f"/proc/{child}/cmdline").read_bytes():
                return True
        except OSError:
            continue
    return False


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _started(pid: int) -> str | None:
    fields = _stat(pid)
    return fields[19] if fields else None  # starttime, field 22 of stat


def _alive(pid: int, started: str | None) -> bool:
    # a zombie is dead for our purpose (the orphaned bwrap is reaped by init, not by us), and so is a
    # process that started after the one we saw under that pid
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z" and fields[19] == started


def test_a_missing_experiment_folder_is_refused(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="create it"):
        jail_argv(Jail.for_this_interpreter(tmp_path / "absent"), [sys.executable])


def test_capabilities_report_every_layer(capabilities):
    assert set(capabilities) == set(Layer)
    for layer, (available, why) in capabilities.items():
        assert isinstance(available, bool) and why, layer


def test_doctor_prints_one_line_per_layer():
    from typer.testing import CliRunner

    from sandbox.cli import sandbox_app

    text = CliRunner().invoke(sandbox_app, ["doctor"])
    assert text.exit_code == 0, text.output
    lines = text.output.splitlines()
    assert [line.split()[0] for line in lines[: len(Layer)]] == [layer.value for layer in Layer]
    assert lines[-1].startswith("Local workers here: ") and "seccomp" in lines[-1]  # what a LocalExecutor gets
    as_json = CliRunner().invoke(sandbox_app, ["doctor", "--json"])
    assert as_json.exit_code == 0, as_json.output
    assert set(json.loads(as_json.output)) == {layer.value for layer in Layer} | {"workers"}


@pytest.mark.slow
def test_measure_startup_overhead(jail: Jail):
    """Median wall time of `python -c pass`, jailed and not, 5 each alternating (printed with -s)."""
    plain = [sys.executable, "-c", "pass"]
    jailed = jail_argv(jail, plain)
    times: dict[str, list[float]] = {"plain": [], "jailed": []}
    for _ in range(5):
        for name, argv in (("plain", plain), ("jailed", jailed)):
            start = time.perf_counter()
            subprocess.run(argv, check=True)
            times[name].append(time.perf_counter() - start)
    plain_ms, jailed_ms = (statistics.median(times[k]) * 1e3 for k in ("plain", "jailed"))
    print(
        f"\npython -c pass: plain {plain_ms:.1f} ms, jailed {jailed_ms:.1f} ms, overhead {jailed_ms - plain_ms:.1f} ms"
    )
    assert jailed_ms - plain_ms < 1000, "a worker must start in under a second (issue 18)"
