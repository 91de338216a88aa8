"""Label Studio server life cycle: install into its own venv, start on loopback, wait, stop.

Label Studio pins Django, pyarrow<25 and its SDK exactly, so it lives in `.venv-ls`, never in the
project's venv; we talk to it over HTTP only. Credentials come from the environment (or a `.env`
file); when none are set, `up` makes random ones and writes them to `.env` (mode 600). They are
passed to the server through its environment, never on a command line, and never printed.

`up` binds loopback only: Label Studio's admin login and API would otherwise face every network the
machine is on, over plain HTTP. Other hosts reach it through a reverse proxy that terminates TLS;
binding elsewhere takes an explicit `allow_remote_bind` (`--allow-remote-bind`).

Label Studio's SSRF protection and its local-IP block for ML backends stay on by default: they stop
the server from fetching URLs on internal addresses (a URL import, a webhook, a backend URL). A backend
on loopback next to the server (`rf1m annotate ml-backend --connect`) needs both off; that takes an
explicit `allow_loopback_ml_backend` (params `labelstudio.allow_loopback_ml_backend: true`), meant for
a single-user machine, never a team's shared server.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import requests

from annotation.client import DEFAULT_URL

LS_VERSION = "1.23.2"
LS_CONSTRAINTS = Path(__file__).with_name("label-studio-constraints.txt")
# Variables Label Studio also reads under bare names (get_env tries LABEL_STUDIO_X, HEARTEX_X, X):
# stray CI values for these must not leak into the server.
LEAKY = ("USERNAME", "PASSWORD", "HOST", "PORT", "USER_TOKEN", "DATA_DIR", "DEBUG")


@dataclass(frozen=True)
class ServerConfig:
    url: str = DEFAULT_URL
    venv: str = ".venv-ls"
    data_dir: str = ".labelstudio"  # sqlite db, media, logs, pid file
    files_root: str = "data"  # the only folder Label Studio serves local files from
    db: str = "sqlite"  # or "postgresql" (POSTGRE_NAME/USER/PASSWORD/HOST/PORT from the environment)
    start_timeout: float = 300.0
    allow_remote_bind: bool = False  # bind a non-loopback address (prefer a reverse proxy; see README)
    allow_loopback_ml_backend: bool = False  # turn off SSRF protection so a backend on 127.0.0.1 can be called

    @property
    def port(self) -> int:
        return urlparse(self.url).port or 80

    @property
    def host(self) -> str:
        return urlparse(self.url).hostname or "127.0.0.1"


def load_dotenv(path: str | Path = ".env") -> None:
    """KEY=VALUE lines into os.environ, without overriding what the environment already says."""
    p = Path(path)
    if not p.exists():
        return
    for line in p.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            k, v = line.split("=", 1)
            os.environ.setdefault(k.strip(), v.strip().strip('"').strip("'"))


def credentials(dotenv: str | Path = ".env") -> dict[str, str]:
    """Admin e-mail, password and API token; made up and saved to `.env` when the environment has none."""
    load_dotenv(dotenv)
    made = {}
    for key, make in (("LABEL_STUDIO_USERNAME", lambda: "admin@rf1m.local"),
                      ("LABEL_STUDIO_PASSWORD", lambda: secrets.token_urlsafe(18)),
                      ("LABEL_STUDIO_API_KEY", lambda: secrets.token_hex(20))):
        if not os.environ.get(key):
            os.environ[key] = made[key] = make()
    p = Path(dotenv)
    if made:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a") as f:
            f.write("".join(f"{k}={v}\n" for k, v in made.items()))
    if p.exists() and p.stat().st_mode & 0o077:  # O_CREAT's mode applies only to a file it creates
        p.chmod(0o600)
        print(f"{p}: made readable by its owner only (mode 600): it holds the Label Studio credentials",
              file=sys.stderr)
    return {k: os.environ[k] for k in ("LABEL_STUDIO_USERNAME", "LABEL_STUDIO_PASSWORD", "LABEL_STUDIO_API_KEY")}


def install(cfg: ServerConfig) -> Path:
    """Create the server's venv with the pinned Label Studio, every dependency at the version in
    `label-studio-constraints.txt` (once, and again whenever that file changes).

    Pinning Label Studio alone is not enough: its own dependency ranges are open, and sentry-sdk 3.0
    (2026-12) made 1.23.2 exit at start ("Unknown option 'send_default_pii'"), so a fresh install broke
    where an old one kept working. The constraints are the freeze of a venv that passed `make test`."""
    exe = Path(cfg.venv) / "bin" / "label-studio"
    stamp = Path(cfg.venv) / ".rf1m-constraints"
    wanted = LS_CONSTRAINTS.read_text()
    if exe.exists() and stamp.exists() and stamp.read_text() == wanted:
        return exe
    print(f"{'updating' if exe.exists() else 'installing'} label-studio=={LS_VERSION} in {cfg.venv} (its own venv; about "
          f"1 GB) to {LS_CONSTRAINTS.name} ...", file=sys.stderr)
    uv = shutil.which("uv", path=str(Path(sys.executable).parent))  # `make install` puts it beside python
    py = str(Path(cfg.venv) / "bin" / "python")
    pins = ["-c", str(LS_CONSTRAINTS), f"label-studio=={LS_VERSION}"]
    if uv:  # about 30 s against pip's 3 to 4 min (README, installs)
        if not Path(py).exists():
            subprocess.run([uv, "venv", "-q", "--python", sys.executable, cfg.venv], check=True)
        subprocess.run([uv, "pip", "install", "-q", "--python", py, *pins], check=True)
    else:
        if not Path(py).exists():
            subprocess.run([sys.executable, "-m", "venv", cfg.venv], check=True)
            subprocess.run([py, "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
        subprocess.run([py, "-m", "pip", "install", "-q", *pins], check=True)
    stamp.write_text(wanted)
    return exe


def healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        r = requests.get(url.rstrip("/") + "/health", timeout=timeout)
        return r.status_code == 200 and r.json().get("status") == "UP"
    except (requests.RequestException, ValueError):
        return False


def _pid_file(cfg: ServerConfig) -> Path:
    return Path(cfg.data_dir) / "server.pid"


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) != 0


def is_loopback(host: str) -> bool:
    """An address on the loopback interface; a name counts only if every address it resolves to does."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback for i in infos)


def up(cfg: ServerConfig) -> dict:
    """Start Label Studio (installing it first if needed) and wait until /health answers."""
    if not cfg.allow_remote_bind and not is_loopback(cfg.host):
        raise ValueError(f"refusing to bind Label Studio to {cfg.host} (from url {cfg.url}): not a loopback "
                         "address, so its login and API would face the network over plain HTTP; keep 127.0.0.1 and "
                         "put a reverse proxy with TLS in front (README), or pass --allow-remote-bind "
                         "(params labelstudio.allow_remote_bind: true)")
    creds = credentials()
    if healthy(cfg.url):
        return {"url": cfg.url, "state": "already running"}
    if not _port_free(cfg.host, cfg.port):
        # LS would silently move to port+1; refuse instead of health-checking somebody else's server
        raise RuntimeError(f"port {cfg.port} on {cfg.host} is taken by something that is not Label Studio")
    exe = install(cfg)
    data = Path(cfg.data_dir).resolve()
    data.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in LEAKY}
    env.update({
        "LABEL_STUDIO_BASE_DATA_DIR": str(data),
        "LABEL_STUDIO_USERNAME": creds["LABEL_STUDIO_USERNAME"],
        "LABEL_STUDIO_PASSWORD": creds["LABEL_STUDIO_PASSWORD"],
        "LABEL_STUDIO_USER_TOKEN": creds["LABEL_STUDIO_API_KEY"],
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(Path(cfg.files_root).resolve()),
        "LATEST_VERSION_CHECK": "false", "COLLECT_ANALYTICS": "false",
        # on unless asked: set either way, so a stray variable in the environment cannot turn them off
        **dict.fromkeys(("ML_BLOCK_LOCAL_IP", "SSRF_PROTECTION_ENABLED"),
                        "false" if cfg.allow_loopback_ml_backend else "true"),
        "DJANGO_DB": "default" if cfg.db == "postgresql" else "sqlite",
    })
    log = open(data / "server.log", "ab")
    proc = subprocess.Popen(
        [str(exe), "start", "--no-browser", "--internal-host", cfg.host, "--port", str(cfg.port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    _pid_file(cfg).write_text(str(proc.pid))
    deadline = time.time() + cfg.start_timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Label Studio exited with code {proc.returncode}; see {data / 'server.log'}")
        if healthy(cfg.url):
            return {"url": cfg.url, "state": "started", "pid": proc.pid, "data_dir": str(data)}
        time.sleep(1.0)
    down(cfg)
    raise TimeoutError(f"Label Studio did not answer /health within {cfg.start_timeout:.0f} s; "
                       f"see {data / 'server.log'}")


def down(cfg: ServerConfig, timeout: float = 20.0) -> dict:
    pid_file = _pid_file(cfg)
    if not pid_file.exists():
        return {"state": "not running" if not healthy(cfg.url) else "running, but not started by us"}
    pid = int(pid_file.read_text())
    try:
        os.killpg(pid, signal.SIGTERM)
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                os.waitpid(pid, os.WNOHANG)  # reap it when this process started it (else it stays a zombie)
            except ChildProcessError:
                pass
            os.killpg(pid, 0)
            time.sleep(0.2)
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    pid_file.unlink(missing_ok=True)
    return {"state": "stopped"}


def status(cfg: ServerConfig) -> dict:
    return {"url": cfg.url, "healthy": healthy(cfg.url)}
