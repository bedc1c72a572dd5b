"""A local search's Ray in a private network namespace, where the only interface is loopback.

Ray 2.60 binds its gRPC servers (GCS, raylet, object manager, workers) on all interfaces,
whatever node IP it is given, so a local Ray would be reachable from the network with token
authentication as its only guard. When `search/run.py` starts its own Ray on local storage, it
re-executes itself (same process id, same arguments) under
`unshare --user --map-root-user --net`: the search and every Ray process it starts see only a
loopback interface, so nothing outside this process tree can connect to any port they open.
Nothing else changes: files are written as the user, GPUs stay visible.

Not used with --address (a cluster needs the network), with remote --storage, where unprivileged
user namespaces are unavailable (a note says so), or with N2N_PRIVATE_NETWORK=0.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import socket
import struct
import subprocess
import sys

SWITCH = "N2N_PRIVATE_NETWORK"          # set to 0 to run Ray on the host's network
INSIDE = "N2N_PRIVATE_NETWORK_ACTIVE"   # set in the re-executed process
UNSHARE = ["--user", "--map-root-user", "--net"]
NO_ROUTABLE_PROBE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # ray._private.ray_constants.ENABLE_RAY_CLUSTER


def wanted(argv: list[str]) -> bool:
    """Whether this command line starts a local Ray on local storage (and isolation is not off)."""
    if os.environ.get(SWITCH, "1") == "0" or os.environ.get(INSIDE) or not sys.platform.startswith("linux"):
        return False
    for i, arg in enumerate(argv):
        value = argv[i + 1] if i + 1 < len(argv) else ""
        if arg in ("-h", "--help") or arg == "--address" or arg.startswith("--address="):
            return False
        if (arg == "--storage" and "://" in value) or (arg.startswith("--storage=") and "://" in arg):
            return False
    return True


def available() -> bool:
    """Whether this user may create a user + network namespace here (tried, not guessed)."""
    exe = shutil.which("unshare")
    if exe is None:
        return False
    try:
        return subprocess.run([exe, *UNSHARE, "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def reexec(script: str, argv: list[str]):
    """Replace this process by `python script argv...` inside a new user + network namespace."""
    exe = shutil.which("unshare")
    os.environ[INSIDE] = "1"
    # Inside, loopback is the only interface, and the node's address is 127.0.0.1. Ray on Linux would
    # look for a routable address first (its C++ probe of 8.8.8.8:53, which fails here and prints
    # "Failed to determine local IP via external connectivity" on every start); this switch, which
    # Ray reads when imported, makes it take the loopback address at once. tests/test_private_network.py
    # checks that the start prints neither that line nor any other Ray warning.
    os.environ.setdefault(NO_ROUTABLE_PROBE, "0")
    sys.stdout.flush(), sys.stderr.flush()
    os.execv(exe, [exe, *UNSHARE, "--", sys.executable, script, *argv])


def loopback_up():
    """Bring up the namespace's loopback interface (a new network namespace starts with it down)."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(s, siocgifflags, request))[1]
        fcntl.ioctl(s, siocsifflags, struct.pack("16sH22x", b"lo", flags | iff_up))


def isolate(script: str, argv: list[str]):
    """At the start of search/run.py: re-execute inside a private network when that applies; inside
    it, bring loopback up. A user without namespaces goes on as before (connect() says so)."""
    if os.environ.get(INSIDE):
        loopback_up()
    elif wanted(argv) and available():
        reexec(script, argv)


def active() -> bool:
    return bool(os.environ.get(INSIDE))
