"""The commands refuse what cannot work before they start anything, with one line naming the
option or file (exit 2), and lose nothing: `serpens up` never empties a directory it did not
make, nor starts a cluster it cannot apply its specs to; `serpens cert issue` never replaces
a context or the cluster's own identities; `serpensctl capture` leaves an earlier capture
whole when the new one cannot be written; numbers no request can carry are refused by
option."""
import json
import os
import subprocess
import sys

import pytest

from serpens.cli import config
from serpens.cli.control import _UsageError
from serpens.cli.usage import parse_since
from serpens.common.pki import CA

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

BIN = os.path.dirname(sys.executable)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(program, *args, env=None):
    return subprocess.run([os.path.join(BIN, program), *args], capture_output=True, text=True,
                          timeout=30, env=env)


def test_up_never_empties_a_directory_it_did_not_make(tmp_path):
    precious = tmp_path / "work"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years")
    r = run("serpens", "--dir", str(precious), "--config", str(tmp_path / "cfg"), "up")
    assert r.returncode == 2 and "is not empty and holds no cluster.json" in r.stderr, r.stderr
    assert (precious / "thesis.tex").read_text() == "years"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    r = run("serpens", "--dir", str(a_file), "--config", str(tmp_path / "cfg"), "up")
    assert r.returncode == 2 and "is not a directory" in r.stderr and a_file.read_text() == "x"
    # a cluster.json is not enough: `up` empties only what holds nothing it did not make
    (precious / "cluster.json").write_text('{"processes": {}}')
    link = tmp_path / "link"
    link.symlink_to(precious)
    for where, words in ((precious, "holds thesis.tex, which `up` did not make"),
                         (f"{link}/", "is not a directory")):  # (the slash: still the link)
        r = run("serpens", "--dir", str(where), "--config", str(tmp_path / "cfg"), "up")
        assert r.returncode == 2 and words in r.stderr, r.stderr
    (precious / "thesis.tex").unlink()
    (precious / "cluster.json").write_text("not what up writes")
    (precious / "notes").write_text("mine")
    r = run("serpens", "--dir", str(precious), "--config", str(tmp_path / "cfg"), "up")
    assert r.returncode == 2 and "holds a cluster.json `up` cannot read" in r.stderr \
        and "put back the one it wrote" in r.stderr, r.stderr
    assert sorted(os.listdir(precious)) == ["cluster.json", "notes"]


def test_down_removes_only_the_state_root_up_names(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "cluster.json").write_text(json.dumps(
        {"processes": {}, "state_root": str(mine)}))
    r = run("serpens", "--dir", str(tmp_path / "c"), "--config", str(tmp_path / "cfg"), "down")
    assert r.returncode == 0 and mine.is_dir(), r.stderr


@pytest.mark.parametrize("make, words", [
    (lambda p: None, "No such file or directory"),
    (lambda p: p.write_bytes(b"\x7fELF\x02\x01\x01\x00\xff\xfe"), "not a text file (UTF-8)"),
    (lambda p: p.write_text("apiVersion: serpens/v1\nkind: SFC\nmetadata: {name: x}\n"
                            "spec: {nfs: 3}\n"), "spec.nfs:"),
])
def test_up_refuses_a_bad_sfc_before_it_starts_anything(tmp_path, make, words):
    spec = tmp_path / "sfc.yaml"
    make(spec)
    where = tmp_path / "cluster"
    r = run("serpens", "--dir", str(where), "--config", str(tmp_path / "cfg"), "up",
            "--sfc", str(spec))
    assert r.returncode == 2 and str(spec) in r.stderr and words in r.stderr, r.stderr
    assert not where.exists() and not (tmp_path / "cfg").exists()  # nothing began


@pytest.mark.parametrize("option, value", [("--etcd-port", "65535"), ("--pps", "0"),
                                           ("--timeout", "nan"), ("--metrics", "65530")])
def test_up_refuses_numbers_that_cannot_work(tmp_path, option, value):
    r = run("serpens", "--dir", str(tmp_path / "c"), "up", option, value)
    assert r.returncode == 2 and f"argument {option}: expected" in r.stderr, r.stderr


def test_cert_issue_never_replaces_a_context_or_the_cluster_s_identities(tmp_path):
    pki = tmp_path / "c" / "pki"
    CA.create(str(pki))
    (tmp_path / "c" / "cluster.json").write_text(json.dumps(
        {"api": "127.0.0.1:50051", "pki": {"dir": str(pki), "ca": str(pki / "ca.crt")},
         "processes": {}}))
    cfg = str(tmp_path / "cfg")
    config.set_context(cfg, {"name": "local", "server": "127.0.0.1:50051", "ca": "a",
                             "cert": "admin.crt", "key": "admin.key"})

    def issue(name, *more):
        return run("serpens", "--dir", str(tmp_path / "c"), "--config", cfg, "cert", "issue",
                   name, "--role", "viewer", *more)

    for name in ("local", "admin", "ca", "ADMIN", "Serpens-controller"):
        r = issue(name, "--force")
        assert r.returncode == 2 and "the cluster's own identities" in r.stderr, r.stderr
    for name in (" admin", "a b", "x\ny", "..", "é"):
        r = issue(name, "--force")
        assert r.returncode == 2 and "a name of 1-64 letters" in r.stderr, (name, r.stderr)
    r = issue("carol", "--force", "--out", str(pki))
    assert r.returncode == 2 and "the cluster's own certificates" in r.stderr, r.stderr
    assert issue("alice").returncode == 0
    r = issue("alice")
    assert r.returncode == 2 and "has a context 'alice' already (--force" in r.stderr, r.stderr
    assert issue("alice", "--force").returncode == 0
    contexts = {c["name"]: c for c in config.load(cfg)["contexts"]}
    assert sorted(contexts) == ["alice", "local"] and contexts["local"]["cert"] == "admin.crt"


def test_capture_to_an_unwritable_path_is_refused_and_an_old_capture_stays(tmp_path):
    old = tmp_path / "old.pcapng"
    old.write_bytes(b"earlier capture")
    ctl = ["--insecure", "--server", "127.0.0.1:1"]  # (refused before any call is made)
    for path, words in ((tmp_path, "is a directory"), ("", "a file name"),
                        (tmp_path / "nope" / "x.pcapng", "no directory")):
        r = run("serpensctl", *ctl, "capture", "fw-mon-nat", "-w", str(path))
        assert r.returncode == 2 and words in r.stderr, r.stderr
    # a refused request (here: no controller at all) leaves the file it would have written
    r = run("serpensctl", *ctl, "--timeout", "2", "capture", "fw-mon-nat", "-w", str(old))
    assert r.returncode == 3 and old.read_bytes() == b"earlier capture", r.stderr


@pytest.mark.parametrize("args, option", [
    (["--timeout", "0", "get", "sfcs"], "--timeout"),
    (["scale", "x", "--replicas", "-1"], "--replicas"),
    (["capture", "x", "-w", "-", "--seconds", "nan"], "--seconds"),
    (["capture", "x", "-w", "-", "-s", "70000"], "-s/--snaplen"),
    (["capture", "x", "-w", "-", "-c", "4294967296"], "-c/--count"),
    (["state", "dump", "x", "y", "--limit", "0"], "--limit"),
    (["top", "--seconds", "-1"], "--seconds"),
    (["drain", "node", "n", "--wait-timeout", "inf"], "--wait-timeout"),
])
def test_serpensctl_refuses_numbers_no_request_can_carry(args, option):
    r = run("serpensctl", "--insecure", "--server", "127.0.0.1:1", *args)
    assert r.returncode == 2 and f"argument {option}: expected" in r.stderr, r.stderr


@pytest.mark.parametrize("text", ["1700000000000", "nan", "inf", "1e20", "99999999999h",
                                  "9" * 400 + "h", "9" * 5000 + "h"])
def test_since_refuses_times_a_request_cannot_carry(text):
    with pytest.raises(_UsageError, match="--since: .* is no time"):
        parse_since(text, now=1.8e9)
    assert parse_since("2h", now=1.8e9) == 1.8e9 - 7200


def test_apply_refuses_a_description_that_is_not_text_before_deploying(tmp_path):
    f = tmp_path / "nf.yaml"
    f.write_text("kind: NF\nname: counter\nsource: counter.c\ndescription: 5\n")
    r = run("serpensctl", "--insecure", "--server", "127.0.0.1:1", "apply", "-f", str(f))
    assert r.returncode == 2 and "description: a string, got 5" in r.stderr, r.stderr


@pytest.mark.parametrize("program, args, option", [
    ("serpens-supervise", ["start", "--pidfile", "p", "--log", "l", "--burst", "0", "true"],
     "--burst"),
    ("serpens-supervise", ["start", "--pidfile", "p", "--log", "l", "--interval-s", "0",
                           "true"], "--interval-s"),
])
def test_the_supervisor_refuses_a_limit_that_would_never_start_or_never_stop(
        tmp_path, program, args, option):
    r = subprocess.run([os.path.join(BIN, program), *args], capture_output=True, text=True,
                       timeout=30, cwd=tmp_path)
    assert r.returncode == 2 and f"argument {option}: expected" in r.stderr, r.stderr
    assert not os.listdir(tmp_path)  # (no pid file, no log)


@pytest.mark.parametrize("command", [["stop"], ["status"],
                                     ["start", "--log", "l", "true"]])
def test_the_supervisor_never_removes_or_replaces_a_file_that_is_not_a_pid_file(
        tmp_path, command):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    r = subprocess.run([os.path.join(BIN, "serpens-supervise"), command[0], "--pidfile",
                        str(notes), *command[1:]], capture_output=True, text=True, timeout=30,
                       cwd=tmp_path)
    assert r.returncode == 2 and "holds something else than a PID" in r.stderr, r.stderr
    assert notes.read_text() == "my notes" and sorted(os.listdir(tmp_path)) == ["notes.txt"]


def test_files_that_never_end_are_refused_not_read_to_the_end(tmp_path):
    nf = tmp_path / "nf.yaml"
    nf.write_text("kind: NF\nname: z\nsource: /dev/zero\n")
    ctl = ["--insecure", "--server", "127.0.0.1:1"]
    for program, args in (("serpensctl", [*ctl, "apply", "-f", "/dev/zero"]),
                          ("serpensctl", [*ctl, "apply", "-f", str(nf)]),
                          ("serpens", ["--dir", str(tmp_path / "c"), "--config",
                                       str(tmp_path / "cfg"), "up", "--sfc", "/dev/zero"])):
        r = run(program, *args)
        assert r.returncode == 2 and "/dev/zero: over" in r.stderr, (args, r.stderr)
    assert not (tmp_path / "c").exists()


def test_up_in_a_directory_that_cannot_be_made_says_so(tmp_path):
    (tmp_path / "afile").write_text("x")
    r = run("serpens", "--dir", str(tmp_path / "afile" / "sub"), "--config",
            str(tmp_path / "cfg"), "up")
    assert r.returncode == 2 and "--dir" in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("text, words", [
    ("{bad", "not JSON"), ("[1, 2]", "no `processes` map"),
    ('{"processes": {"etcd": {"pid": "1"}}}', "no `processes` map")])
@pytest.mark.parametrize("command", ["down", "status"])
def test_a_cluster_json_up_did_not_write_stops_nothing_and_stays(tmp_path, text, words,
                                                                 command):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "cluster.json").write_text(text)
    r = run("serpens", "--dir", str(tmp_path / "c"), "--config", str(tmp_path / "cfg"), command)
    assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert "nothing was stopped" in r.stderr and "remove it)" not in r.stderr.split(";")[0]
    assert (tmp_path / "c" / "cluster.json").read_text() == text


def test_status_of_a_cluster_json_without_its_controller_is_one_line(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "cluster.json").write_text('{"processes": {}}')
    r = run("serpens", "--dir", str(tmp_path / "c"), "status")
    assert r.returncode == 2 and "no 'api' of the cluster's controller" in r.stderr \
        and "Traceback" not in r.stderr, r.stderr


def test_down_never_signals_a_process_that_took_a_recorded_pid(tmp_path):
    # the same program under the PID `up` recorded, started later: not the cluster's
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        (tmp_path / "c").mkdir()
        (tmp_path / "c" / "cluster.json").write_text(json.dumps({"processes": {"etcd": {
            "pid": sleeper.pid, "argv0": "/bin/sleep", "started": 1}}}))
        r = run("serpens", "--dir", str(tmp_path / "c"), "--config", str(tmp_path / "cfg"),
                "down")
        assert r.returncode == 0 and "stopping" not in r.stdout, r.stdout
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.parametrize("text", ["garbage: [", "contexts: [a, b]", "- 1\n"])
def test_cert_issue_with_a_config_it_cannot_write_back_issues_nothing(tmp_path, text):
    ca = CA.create(str(tmp_path / "pki"))
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "cluster.json").write_text(json.dumps(
        {"processes": {}, "api": "127.0.0.1:1", "pki": {"dir": ca.dir, "ca": ca.cert_path}}))
    (tmp_path / "cfg").write_text(text)
    r = run("serpens", "--dir", str(tmp_path / "c"), "--config", str(tmp_path / "cfg"),
            "cert", "issue", "bob", "--role", "viewer")
    assert r.returncode == 2 and "--config" in r.stderr and "Traceback" not in r.stderr, \
        r.stderr
    assert not (tmp_path / "pki" / "users").exists()
    assert (tmp_path / "cfg").read_text() == text


@pytest.mark.parametrize("doc", ["kind: NF\nmetadata: foo\nsource: a.c\n",
                                 "kind: NF\nname: 5\nsource: a.c\n"])
def test_apply_names_what_an_nf_document_lacks(tmp_path, doc):
    f = tmp_path / "nf.yaml"
    f.write_text(doc)
    r = run("serpensctl", "--insecure", "--server", "127.0.0.1:1", "apply", "-f", str(f))
    assert r.returncode == 2 and "a kind NF needs `name`" in r.stderr, r.stderr


def test_apply_checks_every_document_before_it_sends_the_first(tmp_path):
    # the controller is unreachable: had the first document been sent, the exit would be 3
    f = tmp_path / "two.yaml"
    f.write_text("apiVersion: serpens/v1\nkind: SFC\nmetadata: {name: good}\n"
                 "spec: {nfs: {fw: {stock: fw}}, chain: [fw]}\n---\n"
                 "apiVersion: serpens/v1\nkind: SFC\nmetadata: {name: bad}\n"
                 "spec:\n  nfs: {fw: {stock: fw}}\n  chain: [fw]\n  2020-01-01: 1\n")
    r = run("serpensctl", "--insecure", "--server", "127.0.0.1:1", "apply", "-f", str(f))
    assert r.returncode == 2 and "(document 2)" in r.stderr and "2020-01-01" in r.stderr \
        and "Traceback" not in r.stderr, r.stderr


def test_the_supervisor_refuses_a_log_it_cannot_append_to(tmp_path):
    r = subprocess.run([os.path.join(BIN, "serpens-supervise"), "start", "--pidfile", "p",
                        "--log", str(tmp_path), "true"], capture_output=True, text=True,
                       timeout=30, cwd=tmp_path)
    assert r.returncode == 2 and f"--log {tmp_path}: is a directory" in r.stderr, r.stderr
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("content, words", [
    (b"", "not a state snapshot (it holds no tables)"),
    (b"\xff\xfe\xfd", "not a state snapshot ("),
])
def test_restore_refuses_what_is_not_a_snapshot_before_calling(tmp_path, content, words):
    f = tmp_path / "snap"
    f.write_bytes(content)
    r = run("serpensctl", "--insecure", "--server", "127.0.0.1:1", "state", "restore", "s",
            "mon", "-f", str(f))
    assert r.returncode == 2 and words in r.stderr, r.stderr
