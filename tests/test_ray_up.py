"""`ray up` of cluster-local.yaml the way docs/cluster.md ("Machines you own") has a user take it:
the guide's own commands, on a machine with an empty home, reach a finished report, and `ray down`
plus the guide's clean-up leave no Ray process, no listening port and nothing in the home.

The "cluster" is this machine inside private PID, mount and network namespaces made by the test
(loopback only: nothing in them is reachable from outside, nothing outside is touched): an SSH
server on 127.0.0.1 with a key made here, a home directory of its own, a private /tmp, and the
repository seen through an overlay (what the commands write there stays in the namespace).
What differs from a user's run, and why: the edits the guide asks for are made by the test
(`head_ip` 127.0.0.1, `worker_ips: []`, the head's `--num-cpus`), the setup's `pip install` lines
are left out (no network: `~/n2n-venv` is this test's virtual environment), the search is the
`smoke` budget on tiny data instead of `quick`, and the dashboard tunnel takes local port 8266 as
the guide says to when the head is the machine you are on."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from search.ray_session import no_node_to_add

GUIDE = REPO / "docs" / "cluster.md"
SECTION = "## Machines you own"

#: The guide's commands, verbatim, in the order the guide gives them (steps 1 to 7).
LOGIN = "ssh -i ~/.ssh/id_ed25519 -o StrictHostKeyChecking=accept-new ubuntu@192.168.1.10 true"
TOKEN = "(umask 077; ray get-auth-token --generate > /dev/null); chmod 600 ~/.ray/auth_token"
NO_USAGE_STATS = "ray disable-usage-stats"
UP = "ray up cluster-local.yaml --yes"
TUNNEL = "ray dashboard -p 8266 cluster-local.yaml"
JOB_API = "export RAY_ADDRESS=http://127.0.0.1:8265 RAY_AUTH_MODE=token"
SUBMIT = ("ray job submit --submission-id tnet-local --working-dir . -- \\\n"
          "  python search/run.py --space tnet --budget quick --address auto --storage '~/n2n-runs' --name tnet-local")
FETCH = "mkdir -p runs && ray rsync-down cluster-local.yaml '~/n2n-runs/tnet-local/' runs/tnet-local/"
REPORT = "python analysis/report.py runs/tnet-local"
DOWN = "ray down cluster-local.yaml --yes"
CLEAN_UP = """\
for host in 192.168.1.10 192.168.1.11 192.168.1.12; do
  ssh -i ~/.ssh/id_ed25519 ubuntu@$host '~/n2n-venv/bin/ray stop; rm -rf ~/n2n-venv ~/n2n-search ~/ray_bootstrap_key.pem ~/ray_bootstrap_config.yaml; sed -i "/n2n-venv/d; /RAY_AUTH_MODE=token/d" ~/.bashrc'
done"""
GUIDE_COMMANDS = [LOGIN, TOKEN, NO_USAGE_STATS, UP, TUNNEL, JOB_API, SUBMIT, FETCH, REPORT, DOWN, CLEAN_UP]
#: What this machine stands in for: the budget (minutes on `quick`), the port the guide says to use
#: when the head is this machine, the machines and the login.
SMOKE = "--budget smoke --data synthetic --train-size 64 --val-size 16 --epochs 1 --num-samples 2"
STAND_INS = [("--budget quick", SMOKE), ("127.0.0.1:8265", "127.0.0.1:8266"),
             ("192.168.1.10 192.168.1.11 192.168.1.12", "127.0.0.1"), ("192.168.1.10", "127.0.0.1"),
             ("ubuntu@", "root@")]
HEAD_CPUS = 2
#: A search on this cluster whose trial no node can hold: it must exit 2, not wait.
TOO_BIG = ("ray exec cluster-local.yaml 'cd ~/n2n-search && python search/run.py --budget smoke --data synthetic "
           f"--train-size 16 --val-size 8 --cpus-per-trial {HEAD_CPUS + 2} --address auto --storage ~/n2n-runs'")
TOOLS = ["unshare", "ip", "ss", "ssh", "ssh-keygen", "rsync", "mount", "pgrep", "curl"]
SSHD = "/usr/sbin/sshd"


def guide_section() -> str:
    text = GUIDE.read_text()
    start = text.index(SECTION)
    return text[start:text.index("\n## ", start + 1)]


def stand_in(command: str) -> str:
    for theirs, ours in STAND_INS:
        command = command.replace(theirs, ours)
    return command


def test_the_guide_gives_every_command_the_end_to_end_run_takes():
    section = guide_section()
    missing = [c for c in GUIDE_COMMANDS if c not in section]
    assert not missing, f"docs/cluster.md ({SECTION}) no longer says: {missing}"
    for fix in ("rsync", "worker_ips: []", "--num-cpus=0", "ray[default]", "ray stop", "--node-ip-address",
                "note: open files limited to", "torch 2.13.0", "~/ray_bootstrap_key.pem"):
        assert fix in section, f"the guide no longer tells the user about {fix}"
    assert all(theirs in "\n".join(GUIDE_COMMANDS) for theirs, _ in STAND_INS)


LOCAL = {"provider": {"type": "local", "head_ip": "10.0.0.1", "worker_ips": ["10.0.0.2", "10.0.0.3"]}}


@pytest.mark.parametrize("config, joined, can_add", [
    (None, {"10.0.0.1"}, False),  # started by hand with `ray start`: no autoscaler
    ({"provider": {"type": "local", "head_ip": "10.0.0.1", "worker_ips": []}}, {"10.0.0.1"}, False),
    (LOCAL, {"10.0.0.1", "10.0.0.2", "10.0.0.3"}, False),  # every listed machine is a node already
    (LOCAL, {"10.0.0.1", "10.0.0.2"}, True),  # the autoscaler may still bring 10.0.0.3 in
    ({"provider": {"type": "local", "head_ip": "10.0.0.1", "coordinator_address": "10.0.0.9:1234"}},
     {"10.0.0.1"}, True),  # a coordinator lends machines
    ({"provider": {"type": "aws", "region": "us-west-2"}}, {"10.0.0.1"}, True),
], ids=["ray-start", "head-alone", "all-workers-joined", "worker-to-come", "coordinator", "aws"])
def test_whether_anything_can_add_a_node(config, joined, can_add):
    assert (no_node_to_add(config, joined) is None) == can_add


def _missing_for_namespaces() -> str | None:
    if not sys.platform.startswith("linux"):
        return "needs Linux namespaces"
    if os.geteuid() != 0:
        return "needs root: an SSH server with privilege separation and private PID, mount and network namespaces"
    missing = [t for t in TOOLS if shutil.which(t) is None] + ([] if os.path.exists(SSHD) else [SSHD])
    if missing:
        return f"missing {', '.join(missing)} (Debian: apt-get install openssh-server rsync iproute2 curl)"
    try:
        import aiohttp  # noqa: F401  (what ray[default] adds for `ray job submit`)
    except ImportError:
        return "ray[default] is not installed (pip install -e '.[dev]')"
    overlay = (f"mkdir /tmp/u /tmp/w && mount -t overlay overlay -o lowerdir={REPO},upperdir=/tmp/u,workdir=/tmp/w "
               f"{REPO}")
    probe = subprocess.run(["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "--net", "--mount", "sh", "-c",
                            f"mount -t tmpfs none /tmp && {overlay} && ip link set lo up"],
                           capture_output=True, text=True, timeout=30)
    if probe.returncode:
        return (f"private PID, mount and network namespaces (with tmpfs and overlay mounts) are unavailable here: "
                f"{probe.stderr.strip()[:200]}")
    return None


def cluster_yaml() -> str:
    """cluster-local.yaml with the edits the guide asks for on a head alone, and no pip (no network)."""
    config = yaml.safe_load((REPO / "cluster-local.yaml").read_text())
    config["provider"].update(head_ip="127.0.0.1", worker_ips=[])
    config["auth"] = {"ssh_user": "root", "ssh_private_key": "~/.ssh/id_ed25519"}
    config["setup_commands"] = [c for c in config["setup_commands"] if "pip install" not in c]
    assert sum("--num-cpus=0" in c for c in config["head_start_ray_commands"]) == 1
    config["head_start_ray_commands"] = [c.replace("--num-cpus=0", f"--num-cpus={HEAD_CPUS}")
                                         for c in config["head_start_ray_commands"]]
    return yaml.safe_dump(config, sort_keys=False)


#: The machine: private /tmp, /run and /dev/shm, the repository through an overlay (the edited
#: cluster-local.yaml and the fetched results stay in the namespace), a home directory of its own
#: (root's home in a private copy of /etc/passwd: what the SSH server gives a login), an SSH server
#: on 127.0.0.1 that takes a key made here.
MACHINE = r"""
ip link set lo up
mount -t tmpfs none /mnt && mkdir /mnt/work && mount --bind "$WORK" /mnt/work
mount -t tmpfs none /tmp && mkdir -p "$WORK" && mount --bind /mnt/work "$WORK"
mount -t tmpfs none /run && mkdir -p /run/sshd && mount -t tmpfs none /dev/shm
mkdir -p /tmp/overlay/upper /tmp/overlay/work
mount -t overlay overlay -o "lowerdir=$REPO,upperdir=/tmp/overlay/upper,workdir=/tmp/overlay/work" "$REPO"
rm -rf "$REPO/runs"  # as in a fresh clone (git ignores runs/); in the overlay only, the checkout keeps it
if [ -n "$VENV_OUTSIDE" ]; then mount --bind "$VENV" "$VENV" && mount -o remount,bind,ro "$VENV"; fi
mkdir -p "$H/.ssh" && cp -r /etc/skel/. "$H/" && chmod 700 "$H/.ssh"
sed "s#^root:\([^:]*\):0:0:\([^:]*\):[^:]*:#root:\1:0:0:\2:$H:#" /etc/passwd > "$WORK/passwd"
mount --bind "$WORK/passwd" /etc/passwd
export HOME="$H" PATH="$VENV/bin:$PATH"
ln -s "$VENV" "$H/n2n-venv"
ssh-keygen -q -t ed25519 -N '' -f "$WORK/host_key" && ssh-keygen -q -t ed25519 -N '' -f "$H/.ssh/id_ed25519"
cp "$H/.ssh/id_ed25519.pub" "$H/.ssh/authorized_keys"
printf '%s\n' "ListenAddress 127.0.0.1" "HostKey $WORK/host_key" "PidFile /run/sshd.pid" \
    "AuthorizedKeysFile .ssh/authorized_keys" "StrictModes no" "UsePAM no" \
    "PermitRootLogin prohibit-password" "PasswordAuthentication no" "KbdInteractiveAuthentication no" \
    > "$WORK/sshd_config"
/usr/sbin/sshd -f "$WORK/sshd_config" -E "$WORK/sshd.log" || { echo "@@ sshd-failed"; exit 1; }
cd "$REPO"
"""
#: After the guide: Ray processes and listening ports left (the SSH server stopped first), and what
#: `ray up` left in the home.
LEFT = r"""
sleep 2
pgrep -a -f "raylet|gcs_server|dashboard|ray::|default_worker|log_monitor|monitor.py|runtime_env" | sed 's/^/@@ left-process /'
kill "$(cat /run/sshd.pid)"; sleep 0.5
ss -Hltnu | sed 's/^/@@ left-port /'
ls -A "$H" | sed 's/^/@@ left-home /'
grep -h "n2n-venv\|RAY_AUTH_MODE" "$H/.bashrc" | sed 's/^/@@ left-bashrc /'
echo "@@ end"
"""


def script() -> str:
    """The machine's set-up (the test's), then the guide's steps 2 to 7 (the user's), each marked
    with its exit status and seconds (`@@ step rc secs`), then what is left."""
    def step(name, command):
        return f"step {name} bash -c {shlex.quote(command)}"

    guide = [
        step("login", stand_in(LOGIN)),
        "ray get-auth-token --generate > /dev/null  # a token made earlier, readable by all (as Ray leaves it)",
        step("token", TOKEN),
        'stat -c "@@ token-mode %a" ~/.ray/auth_token',
        step("usage-stats", NO_USAGE_STATS),
        step("up", UP),
        'cp ~/ray_bootstrap_config.yaml "$WORK/"',
        f'setsid {TUNNEL} > "$WORK/tunnel.log" 2>&1 &',
        "tunnel=$!",
        "for i in $(seq 60); do curl -s -o /dev/null http://127.0.0.1:8266 && break; sleep 0.5; done",
        stand_in(JOB_API),
        step("submit", stand_in(SUBMIT)),
        """ray job status tnet-local | grep -o "Job 'tnet-local' [a-z]*" | sed 's/^/@@ job /'""",
        step("too-big", TOO_BIG),
        step("fetch", FETCH),
        step("report", REPORT),
        'cp -r runs/tnet-local "$WORK/fetched"',
        "kill -INT -- -$tunnel  # Ctrl-C in its terminal; then its ssh may take a moment to let the port go",
        "for i in $(seq 40); do ss -Hltn | grep -q ':8266 ' || break; sleep 0.25; done",
        step("down", DOWN),
        step("clean-up", stand_in(CLEAN_UP)),
    ]
    return "\n".join([
        "set -u",
        'step() { local name=$1 t0=$SECONDS; shift; "$@"; echo "@@ $name $? $((SECONDS - t0))"; }',
        MACHINE,
        f"cat > cluster-local.yaml <<'YAML'\n{cluster_yaml()}YAML",
        *guide,
        LEFT,
    ])


@pytest.mark.slow
def test_machines_you_own_from_ray_up_to_report_and_back_to_nothing(tmp_path):
    reason = _missing_for_namespaces()
    if reason:
        pytest.skip(reason)
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    (work / "run.sh").write_text(script())
    venv = Path(sys.prefix)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WORK": str(work), "H": str(home), "REPO": str(REPO),
           "VENV": str(venv), "VENV_OUTSIDE": "" if venv.resolve().is_relative_to(REPO.resolve()) else "1"}
    began = time.time()
    # --kill-child: if this test is stopped, the namespace's first process dies and the kernel ends
    # every process inside it (sshd, Ray, the search) with it
    proc = subprocess.run(["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "--net", "--mount",
                           "bash", str(work / "run.sh")], capture_output=True, text=True, timeout=420,
                          env=env)
    took = time.time() - began
    out = proc.stdout + proc.stderr
    (work / "run.log").write_text(out)
    print(f"ray up .. ray down: {took:.0f} s")
    marks = [line[3:].split(" ", 1) for line in proc.stdout.splitlines() if line.startswith("@@ ")]
    steps = {m[0]: m[1] for m in marks if len(m) == 2 and re.fullmatch(r"\d+ \d+", m[1])}
    print({name: f"{v.split()[1]} s" for name, v in steps.items()})
    tail = f"{out[-6000:]}\n(all of it: {work / 'run.log'})"
    assert ["end"] in marks, tail
    for name in ("login", "token", "usage-stats", "up", "submit", "fetch", "report", "down", "clean-up"):
        assert steps.get(name, "?").split()[0] == "0", f"step {name}: {steps.get(name)}\n{tail}"

    # the token is its owner's only (one made earlier was readable by all)
    assert ["token-mode", "600"] in marks, marks
    # the search ran as a job on the head's CPUs, and the report was written from the fetched copy
    assert ["job", "Job 'tnet-local' succeeded"] in marks, tail
    assert f"{HEAD_CPUS} trials at a time (1 CPU, 0 GPU each)" in out, tail
    # its closing lines say how to fetch the results from the head
    assert "mkdir -p runs && ray rsync-down CLUSTER.yaml /" in out and "tnet-local/ runs/tnet-local/ && python analysis/report.py" in out, tail
    assert "no node of the cluster has that now" not in out and "wait until an autoscaler" not in out
    fetched = work / "fetched"
    assert (fetched / "n2n_experiment.json").is_file() and len(list(fetched.glob("trial_*/progress.csv"))) == 2
    report = (fetched / "report" / "report.md").read_text()
    assert "2 trials: 2 finished." in report, report[:500]
    assert (fetched / "report" / "best_model.pt").is_file()
    # a trial no node can hold, on a cluster of Ray's local provider whose machines have all joined:
    # exit 2 with one line, not a wait for ever
    assert steps["too-big"].split()[0] != "0", tail
    assert re.search(rf"search/run.py: error: a trial asks for {HEAD_CPUS + 2} CPU and 0 GPU, but no node of this "
                     r"cluster has that .*every machine in worker_ips is a node already", out), tail
    # the config `ray up` left on the head has what search/ray_session.py reads (tune_internals)
    launched = yaml.safe_load((work / "ray_bootstrap_config.yaml").read_text())
    assert launched["provider"]["type"] == "local" and launched["provider"]["worker_ips"] == []

    # nothing left: no Ray process, no listening port, nothing of `ray up` in the home
    assert not [m for m in marks if m[0] in ("left-process", "left-port")], marks
    left = {m[1] for m in marks if m[0] == "left-home"}
    assert not left & {"n2n-venv", "n2n-search", "ray_bootstrap_key.pem", "ray_bootstrap_config.yaml"}, left
    assert not [m for m in marks if m[0] == "left-bashrc"], marks
    assert took < 300, f"took {took:.0f} s"
