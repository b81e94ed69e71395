"""Hostile generated code against the OS layers (`sandbox.jail`, `sandbox.seccomp`) through
`LocalExecutor.run_many`, as a user's loop would run it.

Each case is plain Python a model could write. The corpus runs twice: with the guard's Python rules on
(the default) and with them off (`python_guard=False`), where the jail and the seccomp filter alone
must contain it. Either way every case ends as a structured failure or a harmless result; a canary
file outside the experiment folder is neither read (its secret is in no result) nor written; a TCP
and a Unix listener receive nothing; the parent's secrets never reach a worker; no process outlives
its experiment; and a benign experiment after each hostile batch returns identical metrics."""

from __future__ import annotations

import json
import math
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from sandbox import Limits, LocalExecutor
from sandbox.jail import jail_unavailable_reason
from sandbox.landlock import landlock_unavailable_reason
from sandbox.seccomp import seccomp_unavailable_reason

pytestmark = pytest.mark.skipif(
    bool(seccomp_unavailable_reason()), reason=f"no seccomp here: {seccomp_unavailable_reason()}"
)

MARKET = "synthetic:40:300:0"
SECRET = "canary-secret-7f3a9c"  # the canary's content
ENV_SECRET = "sk-env-secret-51d2e8"  # an API key in the parent's environment
FILE_MB = 16  # the largest file a worker may write, in this test

BENIGN = {
    "kind": "factor",
    "market": MARKET,
    "expressions": {"rev5": "-($close / Ref($close, 5) - 1)"},
    "code": "import numpy as np\ndef factor(fields):\n    return -fields['close'] / np.roll(fields['close'], 5, axis=1)\n",
}

# after each batch: generated code (on a fresh worker) and expressions only (on a pool worker)
BENIGN_PAIR = [BENIGN, {k: v for k, v in BENIGN.items() if k != "code"}]

# name -> the body of `factor(fields)` before it returns a valid factor. @CANARY@, @PORT@, @UDS@,
# @PARENT@, @ROOT@ are filled in per run.
ATTACKS = {
    # files outside the experiment folder
    "read_canary": "raise RuntimeError(open('@CANARY@').read())",
    "read_canary_numpy": "raise RuntimeError(np.fromfile('@CANARY@', dtype=np.uint8).tobytes().decode())",
    "read_canary_pandas_url": "import pandas as pd\n    raise RuntimeError(str(pd.read_csv('file://@CANARY@')))",
    "read_canary_symlink": "import os\n    os.symlink('@CANARY@', 'link')\n    raise RuntimeError(open('link').read())",
    "write_canary": "open('@CANARY@', 'w').write('pwned')",
    "write_canary_pandas": "import pandas as pd\n    pd.DataFrame({'a': [1]}).to_csv('@CANARY@')",
    "write_sibling_experiment": "open('@ROOT@/experiments/sibling.txt', 'w').write('pwned')",
    "poison_feature_cache": "import os\n    for d, _, _ in os.walk('@ROOT@/markets'):\n        open(os.path.join(d, 'poison.npy'), 'wb').write(b'x')",
    "overwrite_project_code": "import sandbox.experiments as m\n    open(m.__file__, 'a').write('# pwned')",
    "lightgbm_reads_a_file": "import lightgbm as lgb\n    x = np.random.rand(50, 2)\n    lgb.train({'forcedsplits_filename': '@CANARY@', 'verbose': -1}, lgb.Dataset(x, x[:, 0]), 2)",
    "host_secrets": "import os\n    raise RuntimeError(repr(os.listdir('/')) + open('/etc/shadow').read())",
    "environment": "import os\n    raise RuntimeError(repr(dict(os.environ)))",
    "parent_environ": "raise RuntimeError(open('/proc/@PARENT@/environ').read())",
    "fill_the_disk": f"open('big.bin', 'wb').write(b'0' * ({FILE_MB + 1} << 20))",
    # network
    "tcp_to_listener": "import socket\n    socket.create_connection(('127.0.0.1', @PORT@), timeout=2).sendall(b'pwned')",
    "unix_to_listener": "import socket\n    s = socket.socket(socket.AF_UNIX)\n    s.connect('@UDS@')\n    s.sendall(b'pwned')",
    "abstract_unix": "import socket\n    socket.socket(socket.AF_UNIX).bind('\\0rdquant-pwned')",
    # processes
    "fork_writes": "import os\n    if os.fork() == 0:\n        open('@CANARY@', 'w').write('pwned')\n        os._exit(0)",
    "subprocess_shell": "import subprocess\n    subprocess.run(['/bin/sh', '-c', 'echo pwned > @CANARY@'])",
    "posix_spawn": "import os\n    os.posix_spawn('/bin/sh', ['sh', '-c', 'echo pwned > @CANARY@'], {})",
    "multiprocessing_setsid": "import multiprocessing as mp, os\n    mp.get_context('spawn').Process(target=os.setsid).start()",
    "ctypes_fork": "import ctypes\n    pid = ctypes.CDLL(None).syscall(57)\n    if pid == 0:\n        ctypes.CDLL(None)._exit(0)\n    assert pid < 0, 'forked'",
    "memfd_exec": "import os\n    fd = os.memfd_create('x')\n    os.write(fd, open('/bin/sh', 'rb').read())\n    os.execv(f'/proc/self/fd/{fd}', ['sh'])",
    "kill_the_executor": "import os, signal\n    os.kill(@PARENT@, signal.SIGKILL)",
    "kill_everyone": "import os, signal\n    os.kill(-1, signal.SIGKILL)",
    "ptrace_the_executor": "import ctypes\n    assert ctypes.CDLL(None).ptrace(16, @PARENT@, 0, 0) != 0, 'attached'",
    "late_thread_writes": "import threading, time\n    def later():\n        time.sleep(1.5)\n        open('@CANARY@', 'w').write('pwned')\n    threading.Thread(target=later).start()",
    "unshare_and_mount": "import ctypes\n    libc = ctypes.CDLL(None)\n    assert libc.unshare(0x10020000) != 0 and libc.mount(b'none', b'/tmp', b'tmpfs', 0, None) != 0, 'mounted'",
    # the interpreter, for the experiments after this one
    "poison_interpreter": "import builtins, sandbox.experiments as m\n    builtins.float = lambda *a: 0.123\n    m.float = lambda *a: 0.123\n    m.np = None",
    "forge_channel": "import os\n    for fd in range(3, 64):\n        try:\n            os.write(fd, b'\\xff\\xff\\xff\\x7f' + b'x' * 64)\n        except OSError:\n            pass",
}


def _code(body: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        body = body.replace(f"@{key}@", value)
    return f"import numpy as np\ndef factor(fields):\n    {body}\n    return -fields['close'] / np.roll(fields['close'], 5, axis=1)\n"


class _Listener:
    """Counts connections and bytes on a TCP port of 127.0.0.1 and on a Unix socket."""

    def __init__(self, uds: Path):
        self.tcp = socket.create_server(("127.0.0.1", 0))
        self.unix = socket.socket(socket.AF_UNIX)
        self.unix.bind(str(uds))
        self.unix.listen()
        self.port = self.tcp.getsockname()[1]
        self.received: list[bytes] = []
        self._stop = False
        self._threads = [threading.Thread(target=self._serve, args=(s,), daemon=True) for s in (self.tcp, self.unix)]
        for t in self._threads:
            t.start()

    def _serve(self, server: socket.socket) -> None:
        server.settimeout(0.2)
        while not self._stop:
            try:
                conn, _ = server.accept()
            except (TimeoutError, OSError):
                continue
            conn.settimeout(1)
            try:
                self.received.append(conn.recv(1024) or b"<connected>")
            except OSError:
                self.received.append(b"<connected>")
            conn.close()

    def close(self) -> None:
        self._stop = True
        for t in self._threads:
            t.join(2)
        self.tcp.close()
        self.unix.close()


def _processes_under(folder: Path) -> list[int]:
    """Pids whose working directory is inside `folder` (every jailed worker runs in an experiment folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cwd = Path(os.readlink(entry / "cwd"))
            except OSError:
                continue
            if cwd == folder or folder in cwd.parents:
                found.append(int(entry.name))
    return found


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)


MODES = {
    "python_guard": dict(jail=True, python_guard=True),
    "os_layers_only": dict(jail=True, python_guard=False),
    "landlock_seccomp_only": dict(jail=False, python_guard=False),
}  # where namespaces are refused


# Slow-marked (suite time): the guard's own mode, whose subject the bad-experiment corpus covers
# (test_corpus.py), and Landlock's where the jail runs - where it cannot, Landlock is what workers
# get, and that mode runs by default.
_SLOW = {"python_guard"} | ({"landlock_seccomp_only"} if jail_unavailable_reason() is None else set())


@pytest.fixture(scope="module", params=[pytest.param(m, marks=pytest.mark.slow) if m in _SLOW else m for m in MODES])
def hostile_run(request, tmp_path_factory):
    missing = jail_unavailable_reason() if MODES[request.param]["jail"] else landlock_unavailable_reason()
    if missing:
        pytest.skip(f"{request.param}: {missing}")
    tmp = tmp_path_factory.mktemp("containment")
    canary = tmp / "canary.txt"
    canary.write_text(SECRET)
    listener = _Listener(tmp / "listen.sock")
    root = tmp / "sandbox"
    values = {
        "CANARY": str(canary),
        "PORT": str(listener.port),
        "UDS": str(tmp / "listen.sock"),
        "PARENT": str(os.getpid()),
        "ROOT": str(root),
    }
    saved = os.environ.get("OPENAI_API_KEY")
    os.environ["OPENAI_API_KEY"] = ENV_SECRET
    limits = Limits(wall_seconds=20, cpu_seconds=10, memory_mb=1024, file_mb=FILE_MB)
    out = {"results": {}, "benign": [], "left_running": {}}
    try:
        with LocalExecutor(workers=2, root=root, use_cache=False, limits=limits, **MODES[request.param]) as ex:
            out["capabilities"] = ex.capabilities
            out["baseline"] = ex.run_many(BENIGN_PAIR)
            names = list(ATTACKS)
            for i in range(0, len(names), 6):
                batch = names[i : i + 6]
                specs = [
                    {"kind": "factor", "market": MARKET, "code": _code(ATTACKS[n], values), "seed": 0} for n in batch
                ]
                for name, spec, result in zip(batch, specs, ex.run_many(specs)):
                    out["results"][name] = result
                    out["left_running"][name] = (
                        _processes_under(root / "experiments" / result.spec_hash) if result.spec_hash else []
                    )
                out["benign"].append((batch, ex.run_many(BENIGN_PAIR)))
            time.sleep(2.0)  # past the late thread's wake-up
            out["executor_alive"] = True
        out["left_after_close"] = _processes_under(root)
    finally:
        listener.close()
        if saved is None:
            os.environ.pop("OPENAI_API_KEY", None)
        else:
            os.environ["OPENAI_API_KEY"] = saved
    out.update(canary=canary.read_text(), received=listener.received, root=root)
    return out


def test_workers_run_in_the_jail_or_landlock_with_seccomp(hostile_run):
    caps = hostile_run["capabilities"]
    assert (caps["jail"] or caps["landlock"]) and caps["seccomp"], caps


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_is_contained(hostile_run, name):
    result = hostile_run["results"][name]
    text = json.dumps(result.to_dict())
    assert SECRET not in text and ENV_SECRET not in text, f"{name} leaked a secret: {text[:500]}"
    if result.failure is not None:
        assert result.failure.message.strip(), name
    assert hostile_run["left_running"][name] == [], f"{name}: processes outlived the experiment"


def test_nothing_escaped(hostile_run):
    assert hostile_run["canary"] == SECRET, "the canary outside the sandbox was written"
    assert hostile_run["received"] == [], "a listener outside the sandbox was reached"
    assert hostile_run["left_after_close"] == []
    root = hostile_run["root"]
    assert not (root / "experiments" / "sibling.txt").exists()
    assert not list((root / "markets").rglob("poison.npy")), "a market's feature cache was written"


def test_benign_after_each_hostile_batch_is_identical(hostile_run):
    baseline = hostile_run["baseline"]
    assert all(r.ok for r in baseline), [r.failure for r in baseline]
    for batch, after in hostile_run["benign"]:
        for reference, result in zip(baseline, after):
            assert result.ok, (batch, result.failure)
            assert _same(result.metrics, reference.metrics), f"metrics changed after {batch}"


def test_a_link_planted_in_the_capture_is_refused_not_followed(tmp_path):
    """A generated model plants a link to a host file where the capture's artifacts go: the parent,
    which copies a capture into MLflow, refuses the experiment instead of following the link."""
    canary = tmp_path / "canary.txt"
    canary.write_text(SECRET)
    code = (
        "import os\nimport numpy as np\nclass Model:\n"
        "    def fit(self, x_train, y_train, x_valid, y_valid):\n"
        "        os.makedirs('mlflow/artifacts', exist_ok=True)\n"
        f"        os.symlink('{canary}', 'mlflow/artifacts/loot.txt')\n"
        "    def predict(self, x):\n        return np.nan_to_num(np.asarray(x, dtype=float)[:, 0])\n"
    )
    spec = {
        "kind": "model",
        "market": MARKET,
        "family": "linear",
        "code": code,
        "backtest": {"topk": 5, "n_drop": 1},
        "features": {"rev5": "-($close/Ref($close,5)-1)", "ma10": "Mean($close,10)/$close"},
    }
    with LocalExecutor(
        workers=1,
        root=tmp_path / "sandbox",
        use_cache=False,
        python_guard=False,
        limits=Limits(wall_seconds=120, cpu_seconds=120),
    ) as ex:
        result = ex.run(spec)
    assert result.failure is not None and result.failure.category.value == "forbidden_operation", result.failure
    assert "link" in result.failure.message and SECRET not in json.dumps(result.to_dict())


def test_python_guard_off_needs_the_os_layers(tmp_path):
    with pytest.raises(ValueError, match="python_guard=False needs"):
        LocalExecutor(workers=1, root=tmp_path, jail=False, landlock=False, python_guard=False)
    with pytest.raises(ValueError, match="python_guard=False needs"):
        LocalExecutor(workers=1, root=tmp_path, seccomp=False, python_guard=False)
