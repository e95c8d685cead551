"""deploy/testbed.sh's engine: the namespace testbed of deploy/inventory/testbed.yml.

    deploy/testbed.sh up [--dir DIR]     # hosts, sshds, site.yml over SSH, an SFC, its traffic
    deploy/testbed.sh play PLAYBOOK      # another run of a playbook against the testbed
    deploy/testbed.sh down [--dir DIR]   # teardown.yml, then the sshds, namespaces, bridges

`up` makes three hosts n1..n3 with cli/testbed.py (a network namespace each, its eth0 on a
control bridge whose host address is .1, eth1 on an underlay bridge), gives each its own UTS
namespace (its hostname is its namespace's name) and its own sshd (its address, port 22, its
own host key and pid file; root logs in with the key `up` generates in DIR/ssh), runs
site.yml over SSH into them (serpens_mode supervise: see the inventory), which writes the
serpensctl context `deploy-<tag>` to --config (default $SERPENS_CONFIG or ~/.serpens/config),
then applies examples/fw-mon-nat.yaml through the deployed controller and shows the packets
it processed rising (`serpensctl usage`). The plan (names, addresses, sshd PIDs)
is in DIR/testbed.json before anything is made: `down` removes exactly that, also after `up`
failed half-way; it stops the PIDs recorded there (each checked to still run sshd with its
config), should teardown.yml fail the supervised processes by their pid files, and last
whatever still runs in the testbed's own namespaces (nothing else is touched).
Names carry a tag derived from DIR, so testbeds, `serpens up` and tests never collide.
Exit codes: 0 done, 1 a step failed (its output is shown), 2 bad usage.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import time

from serpens.cli import config
from serpens.cli.testbed import Testbed, TestbedError, tag_for

DEPLOY = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(DEPLOY)
BIN = os.path.dirname(sys.executable)
INVENTORY = os.path.join(DEPLOY, "inventory", "testbed.yml")
HOSTS = ["n1", "n2", "n3"]             # as in inventory/testbed.yml
SFC = os.path.join(ROOT, "examples", "fw-mon-nat.yaml")
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


class Failed(Exception):
    pass


def _run(argv: list[str], what: str, env: dict | None = None, check: bool = True,
         timeout: float = 600) -> subprocess.CompletedProcess:
    r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)
    if check and r.returncode:
        raise Failed(f"{what}: exit {r.returncode}\n{r.stdout[-3000:]}{r.stderr[-3000:]}")
    return r


# ---- the plan and its state file ---------------------------------------------------------

def plan(directory: str, config_path: str) -> dict:
    tag = tag_for(directory)
    bed = Testbed(tag, HOSTS)
    return {"dir": directory, "tag": tag, "testbed": bed.to_dict(), "config": config_path,
            "context": f"deploy-{tag}", "sshd": {},
            "namespaces": list(bed.ns.values()), "bridges": list(bed.bridges.values())}


def state_path(directory: str) -> str:
    return os.path.join(directory, "testbed.json")


def save(state: dict):
    with open(state_path(state["dir"]) + ".tmp", "w") as f:
        json.dump(state, f, indent=2)
    os.replace(state_path(state["dir"]) + ".tmp", state_path(state["dir"]))


def load(directory: str) -> dict | None:
    try:
        with open(state_path(directory)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def extra_vars(state: dict) -> str:
    """DIR/testbed.json's part the inventory reads (-e @DIR/vars.json)."""
    bed = Testbed.from_dict(state["testbed"])
    path = os.path.join(state["dir"], "vars.json")
    with open(path, "w") as f:
        json.dump({"testbed_dir": state["dir"], "testbed_context": state["context"],
                   "testbed_address": bed.address, "testbed_underlay": bed.underlay}, f)
    return path


# ---- sshd in each host ---------------------------------------------------------------------

def _ssh_dir(state) -> str:
    return os.path.join(state["dir"], "ssh")


def make_keys(state: dict):
    """The key root logs in with (DIR/ssh/id_ed25519) and each host's host key."""
    ssh = _ssh_dir(state)
    os.makedirs(ssh, mode=0o700, exist_ok=True)
    key = os.path.join(ssh, "id_ed25519")
    if not os.path.exists(key):
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"deploy-{state['tag']}",
              "-f", key], "ssh-keygen")
    shutil.copyfile(key + ".pub", os.path.join(ssh, "authorized_keys"))
    for host in HOSTS:
        hostkey = os.path.join(state["dir"], "hosts", host, "ssh", "ssh_host_ed25519_key")
        os.makedirs(os.path.dirname(hostkey), mode=0o700, exist_ok=True)
        if not os.path.exists(hostkey):
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", hostkey], "ssh-keygen")


def sshd_config(state: dict, host: str) -> str:
    bed = Testbed.from_dict(state["testbed"])
    base = os.path.join(state["dir"], "hosts", host, "ssh")
    path = os.path.join(base, "sshd_config")
    with open(path, "w") as f:
        f.write(f"""# deploy/testbed.py: the sshd of testbed host {host} ({bed.ns[host]})
ListenAddress {bed.address[host]}:22
HostKey {base}/ssh_host_ed25519_key
PidFile {base}/sshd.pid
AuthorizedKeysFile {_ssh_dir(state)}/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
X11Forwarding no
PrintMotd no
LogLevel ERROR
Subsystem sftp internal-sftp
""")
    return path


def start_sshd(state: dict, host: str):
    """sshd in `host`'s network namespace and a new UTS namespace named after it; its PID
    (from its pid file) goes to the state file."""
    bed = Testbed.from_dict(state["testbed"])
    cfg = sshd_config(state, host)
    pidfile = os.path.join(os.path.dirname(cfg), "sshd.pid")
    state["sshd"][host] = {"pid": 0, "config": cfg, "pidfile": pidfile}
    save(state)                  # before it runs: `down` finds it by its pid file
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)   # sshd's privilege separation dir
    _run(["ip", "netns", "exec", bed.ns[host], "unshare", "--uts", "--", "sh", "-c",
          'hostname "$0" && exec "$1" -f "$2"', bed.ns[host], SSHD, cfg], f"sshd of {host}")
    deadline = time.monotonic() + 10
    while True:
        text = _read(pidfile)
        if text.isdigit() and _is_sshd(int(text), cfg):
            break
        if time.monotonic() > deadline:
            raise Failed(f"sshd of {host}: no pid file {pidfile}")
        time.sleep(0.05)
    state["sshd"][host] = {"pid": int(text), "config": cfg}
    save(state)
    while not _accepts(bed.address[host], 22):
        if time.monotonic() > deadline:
            raise Failed(f"sshd of {host}: {bed.address[host]}:22 does not accept")
        time.sleep(0.05)


def _accepts(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=0.5):
            return True
    except OSError:
        return False


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _is_sshd(pid: int, cfg: str) -> bool:
    """`pid` still runs the sshd started with `cfg` (not a reused PID)."""
    try:   # sshd retitles itself ("sshd: /usr/sbin/sshd -f CFG [listener] ...")
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            title = f.read().decode(errors="replace").replace("\0", " ")
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return False
    return os.path.basename(exe) == "sshd" and f"-f {cfg}" in title


def stop_sshds(state: dict) -> list[str]:
    stopped = []
    for host, sshd in state["sshd"].items():
        if not sshd["pid"] and _read(sshd["pidfile"]).isdigit():
            sshd["pid"] = int(_read(sshd["pidfile"]))
        if _is_sshd(sshd["pid"], sshd["config"]):
            os.kill(sshd["pid"], 15)
            deadline = time.monotonic() + 5
            while _is_sshd(sshd["pid"], sshd["config"]) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _is_sshd(sshd["pid"], sshd["config"]):
                os.kill(sshd["pid"], 9)
            stopped.append(f"sshd of {host} (pid {sshd['pid']})")
    return stopped


# ---- ansible and serpensctl --------------------------------------------------------------

def play(state: dict, playbook: str, stream: bool = True) -> str:
    """ansible-playbook `playbook` (a file of deploy/) against the testbed; its output."""
    env = {**os.environ, "ANSIBLE_CONFIG": os.path.join(DEPLOY, "ansible.cfg"),
           "ANSIBLE_SSH_CONTROL_PATH_DIR": os.path.join(_ssh_dir(state), "cp"),
           "ANSIBLE_LOCAL_TEMP": os.path.join(state["dir"], "ansible-local"),
           "ANSIBLE_HOME": os.path.join(state["dir"], "ansible-home"),
           "ANSIBLE_NOCOLOR": "1", "SERPENS_CONFIG": state["config"]}
    argv = [os.path.join(BIN, "ansible-playbook"), "-i", INVENTORY,
            "-e", "@" + extra_vars(state), os.path.join(DEPLOY, playbook)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=DEPLOY)
    out = []
    try:
        for line in proc.stdout:
            out.append(line)
            if stream:
                print(line, end="", flush=True)
    except KeyboardInterrupt:   # a terminal's Ctrl-C reached ansible too; a lone SIGINT did not
        proc.terminate()
        raise
    finally:
        proc.wait()
        close_masters(state)
    if proc.returncode:
        raise Failed(f"ansible-playbook {playbook}: exit {proc.returncode}"
                     + ("" if stream else "\n" + "".join(out[-60:])))
    return "".join(out)


def close_masters(state: dict):
    """End ansible's SSH connection masters (ControlPersist): left to time out, they could
    outlive `down`, and their sshd sessions in the namespaces with them."""
    for socket_path in glob.glob(os.path.join(_ssh_dir(state), "cp", "*")):
        subprocess.run(["ssh", "-o", f"ControlPath={socket_path}", "-O", "exit", "testbed"],
                       capture_output=True, timeout=30)


def in_namespace(ns: str) -> list[int]:
    """PIDs of every process in network namespace `ns` (by its inode)."""
    try:
        inode = os.stat(f"/run/netns/{ns}").st_ino
    except OSError:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}/ns/net").st_ino == inode:
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


def sweep(state: dict) -> list[str]:
    """Stop whatever still runs in the testbed's namespaces (an sshd session whose client
    is gone, a program teardown.yml could not stop): the namespaces are the testbed's, so
    is everything in them. Returns what it stopped."""
    swept = []
    for ns in state["namespaces"]:
        pids = [p for p in in_namespace(ns) if _running(p)]
        swept += [f"pid {p} in {ns}" for p in pids]
        for sig in (15, 9):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 5
            while (pids := [p for p in pids if _running(p)]) and time.monotonic() < deadline:
                time.sleep(0.05)
            if not pids:
                break
    return swept


def remove_dead_dpdk_files() -> list[str]:
    """The DPDK files (runtime directory, hugepages) of the testbed's agents and gateway
    that died without removing them (killed, then restarted under a new PID): prefixes
    serpens-node-<host>-<pid> and serpens-gw-<host>-<pid> that no live process holds (the
    EAL's lock) and that are older than a start-up."""
    from serpens.common.names import gateway_file_prefix, node_file_prefix
    from serpens.runtime_cy.primary import RUNTIME_ROOT, remove_stale_files
    removed = []
    for host in HOSTS:
        for pattern in (node_file_prefix(host, 0)[:-1], gateway_file_prefix(host, 0)[:-1]):
            for path in glob.glob(os.path.join(RUNTIME_ROOT, pattern + "[0-9]*")):
                prefix = os.path.basename(path)
                if remove_stale_files(prefix, min_age=10):
                    removed.append(prefix)
    return removed


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def serpensctl(state: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return _run([os.path.join(BIN, "serpensctl"), "--config", state["config"], "--context",
                 state["context"], *args], "serpensctl " + " ".join(args), check=check,
                timeout=120)


def wait_for(what: str, probe, timeout: float):
    print(f"  {what} ...", end="", flush=True)
    t0 = time.monotonic()
    while True:
        got = probe()
        if got:
            print(f" ok ({time.monotonic() - t0:.1f} s)")
            return got
        if time.monotonic() - t0 > timeout:
            print(" timed out")
            raise Failed(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.5)


def nodes(state: dict) -> list[str]:
    r = serpensctl(state, "get", "nodes", "-o", "json", check=False)
    try:
        doc = json.loads(r.stdout)
    except ValueError:
        return []
    items = doc if isinstance(doc, list) else doc.get("nodes", doc.get("items", []))
    return sorted(n.get("name", "") for n in items)


def forwarded(state: dict, sfc: str = "fw-mon-nat") -> int:
    """Packets SFC `sfc` has processed since it started (`serpensctl usage`: the packets its
    instances were billed for); -1 while there is no answer."""
    r = serpensctl(state, "usage", sfc, "-o", "json", check=False)
    try:
        return _packets(json.loads(r.stdout))
    except ValueError:
        return -1


def _packets(doc) -> int:
    """The `packets` figure of a usage report (-1: none in it)."""
    if isinstance(doc, dict):
        if isinstance(doc.get("packets"), int):
            return doc["packets"]
        doc = list(doc.values())
    if isinstance(doc, list):
        for item in doc:
            if (n := _packets(item)) >= 0:
                return n
    return -1


# ---- up / down --------------------------------------------------------------------------

def up(args) -> int:
    directory = os.path.abspath(args.dir)
    if load(directory):
        print(f"testbed: {directory} holds a testbed; `deploy/testbed.sh down --dir "
              f"{directory}` first", file=sys.stderr)
        return 2
    os.makedirs(directory, exist_ok=True)
    state = plan(directory, os.path.abspath(args.config))
    try:   # site.yml makes the testbed's context current: `down` puts this one back
        state["previous_context"] = config.load(state["config"]).get("current-context", "")
    except config.ConfigError:
        state["previous_context"] = ""
    save(state)                   # the plan first: `down` removes what follows
    bed = Testbed.from_dict(state["testbed"])
    try:
        print(f"testbed {state['tag']}: hosts {', '.join(bed.ns.values())} on "
              f"{bed.control_net} (bridge {bed.bridges['control']}, this machine "
              f"{bed.host}), underlay {bed.underlay_net}")
        bed.create()
        make_keys(state)
        for host in HOSTS:
            start_sshd(state, host)
            print(f"  {host}: sshd pid {state['sshd'][host]['pid']} at "
                  f"{bed.address[host]}:22, hostname {bed.ns[host]}")
        play(state, "site.yml")
        print(f"serpensctl context {state['context']!r} in {state['config']}")
        wait_for("every agent registered (serpensctl get nodes)",
                 lambda: nodes(state) == ["n2", "n3"], args.timeout)
        print(serpensctl(state, "get", "nodes").stdout)
        serpensctl(state, "apply", "-f", SFC, "--wait", "--wait-timeout", str(args.timeout))
        first = wait_for("packets through fw-mon-nat (serpensctl usage)",
                         lambda: max(forwarded(state), 0), args.timeout)
        time.sleep(3)
        print(f"  packets fw-mon-nat processed: {first}, 3 s later {forwarded(state)}")
        print(serpensctl(state, "get", "sfcs").stdout)
    except (Failed, TestbedError, subprocess.TimeoutExpired) as e:
        print(f"testbed: {e}\n(the testbed stays for a look: deploy/testbed.sh down --dir "
              f"{directory} removes it)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ntestbed: interrupted; the testbed stays: run deploy/testbed.sh down --dir "
              f"{directory}", file=sys.stderr)
        return 130
    print(f"The testbed is up. Try:\n  {BIN}/serpensctl --config {state['config']} --context "
          f"{state['context']} top\n  deploy/testbed.sh down --dir {directory}")
    return 0


def down(args) -> int:
    directory = os.path.abspath(args.dir)
    state = load(directory)
    if state is None:
        print(f"testbed: none in {directory}")
        return 0
    code = 0
    gone = [h for h in HOSTS if h not in state["sshd"]
            or not _is_sshd(state["sshd"][h]["pid"], state["sshd"][h]["config"])]
    if not gone:
        try:
            play(state, "teardown.yml", stream=not args.quiet)
        except Failed as e:
            print(f"testbed: {e}", file=sys.stderr)
            code = 1
    else:
        print(f"testbed: teardown.yml skipped: no sshd runs in {', '.join(gone)} (ansible "
              f"could not reach it); the supervised processes are stopped by their pid "
              f"files and the testbed's files removed instead")
    # what teardown.yml could not stop (it failed, or a host's sshd was gone)
    for pidfile in glob.glob(os.path.join(directory, "hosts", "*", "run", "serpens", "*.pid")):
        r = _run([sys.executable, "-m", "serpens.cli.supervise", "stop", "--pidfile", pidfile],
                 "serpens-supervise stop", check=False)
        if r.stdout.strip() == "stopped":
            print(f"  stopped the supervised process of {pidfile}")
    for stopped in stop_sshds(state) + sweep(state):
        print(f"  stopped {stopped}")
    for prefix in remove_dead_dpdk_files():
        print(f"  removed the DPDK files of {prefix} (its process was killed)")
    removed = Testbed.from_dict(state["testbed"]).remove()
    if removed:
        print(f"  removed {', '.join(removed)}")
    try:   # teardown.yml removes the context; without it (it failed), remove it here
        doc = config.load(state["config"])
        changed = False
        if any(c.get("name") == state["context"] for c in doc["contexts"]):
            doc["contexts"] = [c for c in doc["contexts"] if c.get("name") != state["context"]]
            changed = True
        if doc.get("current-context") == state["context"]:
            doc.pop("current-context")
            changed = True
        previous = state.get("previous_context", "")
        if (previous and "current-context" not in doc
                and any(c.get("name") == previous for c in doc["contexts"])):
            doc["current-context"] = previous     # the one that was current before `up`
            changed = True
            print(f"  serpensctl's current context is {previous!r} again")
        if changed and not doc["contexts"]:   # as teardown.yml leaves it: no file
            os.unlink(state["config"])
        elif changed:
            config.save(state["config"], doc)
    except config.ConfigError:
        pass
    shutil.rmtree(directory, ignore_errors=True)
    print(f"testbed {state['tag']}: down")
    return code


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="deploy/testbed.sh", description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=("up", "play", "down"))
    ap.add_argument("playbook", nargs="?", help="play: site.yml or teardown.yml")
    ap.add_argument("--dir", default="/run/serpens/deploy-testbed",
                    help="the testbed's files (keys, hosts' roots, CA, state; default "
                         "%(default)s); its tag is derived from it")
    ap.add_argument("--config", default=config.default_path(),
                    help="serpensctl's config file the context goes to (default: "
                         "$SERPENS_CONFIG or ~/.serpens/config)")
    ap.add_argument("--timeout", type=float, default=120.0,
                    help="seconds to wait for each step (default %(default)s)")
    ap.add_argument("--quiet", action="store_true", help="down: no ansible output")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("testbed: run as root (namespaces, bridges, sshd)", file=sys.stderr)
        return 2
    if args.command == "up":
        return up(args)
    if args.command == "down":
        try:
            return down(args)
        except KeyboardInterrupt:
            print("\ntestbed: interrupted; run deploy/testbed.sh down again to finish",
                  file=sys.stderr)
            return 130
    state = load(os.path.abspath(args.dir))
    if state is None or args.playbook not in ("site.yml", "teardown.yml"):
        print("testbed: play site.yml|teardown.yml, with a testbed up in --dir",
              file=sys.stderr)
        return 2
    try:
        play(state, args.playbook)
    except Failed as e:
        print(f"testbed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ntestbed: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
