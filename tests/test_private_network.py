"""A local Ray started by `search/run.py` is reachable over loopback only: the command runs it in a
private network namespace whose only interface is loopback (search/private_network.py)."""
import os
import socket
import subprocess
import sys
import time

import psutil
import pytest

from conftest import REPO
from search import private_network

pytestmark = [pytest.mark.slow,  # starts the real command's Ray in a namespace
              pytest.mark.skipif(not private_network.available(),
                                 reason="unprivileged user + network namespaces are not available here")]


def listening_ports(pid: int) -> set[int]:
    ports = set()
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A":  # LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def ray_daemons(pid: int) -> list[psutil.Process]:
    """The GCS and raylet among the process's descendants. A short-lived descendant (a worker starting, a
    probe's shell) may end between the listing and the look at its name: it is none of them."""
    found = []
    for p in psutil.Process(pid).children(recursive=True):
        try:
            if p.name() in ("gcs_server", "raylet"):
                found.append(p)
        except psutil.NoSuchProcess:
            continue
    return found


def host_addresses() -> list[str]:
    """This machine's own addresses in the test's namespace, loopback and the others."""
    found = {"127.0.0.1"}
    for addrs in psutil.net_if_addrs().values():
        found.update(a.address for a in addrs if a.family == socket.AF_INET)
    return sorted(found)


def connects(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
        return True
    except OSError:
        return False


def test_local_ray_of_the_command_is_reachable_over_loopback_only(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "search" / "run.py"), "--budget", "smoke", "--data", "synthetic",
         "--epochs", "12", "--num-samples", "2", "--scheduler", "fifo", "--storage", str(tmp_path), "--name", "lo"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        ray_procs = []
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            ray_procs = ray_daemons(proc.pid)
            trained = list(tmp_path.glob("lo/trial_*/progress.csv"))  # a trial reported: Ray is fully up
            if len(ray_procs) == 2 and trained:
                break
            time.sleep(0.5)
        assert len(ray_procs) == 2 and trained, "the command started its own GCS and raylet, and a trial ran"
        host_ns = os.readlink("/proc/self/ns/net")
        ports = set()
        for p in [psutil.Process(proc.pid), *ray_procs]:
            assert os.readlink(f"/proc/{p.pid}/ns/net") != host_ns, f"{p.name()} runs in a network namespace of its own"
            with open(f"/proc/{p.pid}/net/dev") as f:
                interfaces = {line.split(":")[0].strip() for line in f.readlines()[2:]}
            assert interfaces == {"lo"}, f"{p.name()} sees interfaces {interfaces}"
            ports |= listening_ports(p.pid)
        assert len(ports) >= 3, f"GCS, raylet, object manager and workers listen: {ports}"
        ours = listening_ports(os.getpid())  # a port of the same number may be open out here by chance
        for port in sorted(ports - ours):
            for host in host_addresses():
                assert not connects(host, port), f"Ray's port {port} answers at {host} outside its namespace"
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-2000:]
        assert "reachable over loopback only" in out
        # a normal start prints no warning of Ray's (issue 22): not the address probe, not the token notice
        for line in ("Failed to determine local IP", "Token authentication is enabled", "WARNING"):
            assert line not in out, f"{line!r} printed: {out[:1500]}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_isolation_applies_only_to_a_local_ray_on_local_storage(monkeypatch):
    monkeypatch.delenv(private_network.SWITCH, raising=False)
    monkeypatch.delenv(private_network.INSIDE, raising=False)
    assert private_network.wanted(["--space", "tnet", "--storage", "runs"])
    assert not private_network.wanted(["--address", "auto"])
    assert not private_network.wanted(["--address=10.0.0.5:6379"])
    assert not private_network.wanted(["--storage", "s3://bucket/runs"])
    monkeypatch.setenv(private_network.SWITCH, "0")
    assert not private_network.wanted(["--space", "tnet"])
