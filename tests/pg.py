"""A private PostgreSQL cluster for the Label Studio tests: 127.0.0.1, a free port, a temporary folder.

Teams run Label Studio on PostgreSQL, so the tests run there as well as on sqlite. Debian's
`postgresql` is installed when missing (apt-get; needs root). The cluster belongs to the `postgres`
system user because initdb refuses to run as root; it trusts local connections, listens on loopback
only, runs with fsync off (a test database is thrown away) and is stopped and deleted afterwards.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path


def binaries() -> Path:
    """The newest installed PostgreSQL's bin folder, installing Debian's package first if there is none."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        if os.geteuid() != 0:
            raise RuntimeError("PostgreSQL is not installed and installing it needs root: apt-get install postgresql")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "postgresql"], check=True, env=env,
                       capture_output=True)
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent


def _as_owner(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@contextmanager
def cluster(port: int, database: str = "labelstudio", user: str = "rf1m"):
    """Yields Label Studio's POSTGRE_* settings for a fresh database on a cluster of its own."""
    bin_dir = binaries()
    root = Path(tempfile.mkdtemp(prefix="rf1m-pg-"))  # under /tmp, which the postgres user can reach
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    data, log = root / "data", root / "server.log"
    run = lambda *cmd: subprocess.run(_as_owner([str(bin_dir / cmd[0]), *cmd[1:]]), check=True,  # noqa: E731
                                      capture_output=True, text=True)
    try:
        run("initdb", "-D", str(data), "-U", user, "--auth=trust", "--no-sync", "-E", "UTF8")
        run("pg_ctl", "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o",
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
        try:
            run("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", user, database)
            yield {"POSTGRE_NAME": database, "POSTGRE_USER": user, "POSTGRE_PASSWORD": "",
                   "POSTGRE_HOST": "127.0.0.1", "POSTGRE_PORT": str(port)}
        finally:
            run("pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop")
    except subprocess.CalledProcessError as e:
        raise RuntimeError(f"PostgreSQL: {' '.join(e.cmd[-3:])} failed: {e.stderr[-500:]}") from None
    finally:
        shutil.rmtree(root, ignore_errors=True)
