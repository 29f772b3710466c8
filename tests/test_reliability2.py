"""Reliability, second pass (issue #27): adversarial input of each class, several cases each.

1. untrusted sizes of the input itself (YAML that expands or nests without end)
2. special files where a regular file is expected (FIFOs, device nodes, sockets)
3. work before checks (counts checked before anything proportional to them is computed)
4. numbers that pass validation and break the run later (every numeric key has a range)
5. replacing what is not ours (--force, dataset files and folders)
6. secrets in lines (URL credentials in errors, output and results)
7. exit codes and lines (preflight I/O errors, schemes, credentials files, cgroups, verify)

Cases run the CLI as a user would (one process, or mpiexec with 2 ranks) on real files,
FIFOs, sockets and device nodes made in private temporary directories; the contract is
the one of tests/test_reliability.py: exit code, one `mpibench: error:` line, no traceback,
no hang, and nothing outside the run touched.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest
from conftest import REPO, Completed, clean_env, mpibench_cmd, run_cli, tree

from mpibench import config as config_mod
from mpibench import environment, safeio
from mpibench.config import build_config, load_yaml
from mpibench.errors import ConfigError, MpibenchError
from mpibench.redact import RedactingStream, redact

END_WITHIN_S = 60.0  # a bound on a hang, not a timing: every case ends in about a second


def only_error(done: Completed, code: int, *fragments: str) -> str:
    """The single error line of a refused command: the exit code, no traceback."""
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("mpibench: error: ")]
    assert len(errors) == 1, done.stderr
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


def write_config(path: str, root: str, **sections: dict) -> str:
    """A small YAML configuration at `path` (workload datagen unless given)."""
    doc = {"workload": "datagen", "storage": {"type": "local_fs", "root": root},
           "dataset": {"num_files": 8, "record_size": 4096, "samples_per_file": 2}}
    for key, value in sections.items():
        if isinstance(value, dict):
            doc.setdefault(key, {}).update(value)
        else:
            doc[key] = value
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(doc, handle)  # JSON is YAML
    return path


@pytest.fixture
def box(tmp_path) -> dict[str, str]:
    """A storage root and a place for configs and results, on the test disk."""
    base = os.environ.get("MPIBENCH_TEST_DIR") or str(tmp_path)
    import tempfile

    top = tempfile.mkdtemp(prefix="rel2-", dir=base)
    root = os.path.join(top, "root")
    os.mkdir(root)
    yield {"top": top, "root": root, "config": write_config(os.path.join(top, "c.yaml"), root),
           "output": os.path.join(top, "result.json")}
    subprocess.run(["rm", "-rf", top], check=False)


def char_device(path: str, major: int, minor: int) -> str:
    """A private device node (a copy of /dev/zero is 1,5; of /dev/null 1,3)."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(major, minor))
    except PermissionError:
        pytest.skip("mknod is not permitted here")
    return path


def unix_socket(path: str) -> socket.socket:
    """A listening UNIX socket at `path` (kept open by the caller)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(1)
    return sock


# -- 1. untrusted sizes of the input itself ---------------------------------------------------


def laughs(levels: int, width: int = 9) -> str:
    """A 'billion laughs' YAML: each level is `width` aliases of the level below."""
    lines = ["l0: &l0 [" + ", ".join(["lol"] * width) + "]"]
    for level in range(1, levels + 1):
        lines.append(f"l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("text, fragment", [
    (laughs(9), "expands to more than"),  # 9^10 values from 600 bytes
    (laughs(30, 2), "expands to more than"),  # 2^31 values, narrow and deep
    ("a: " + "[" * 20000 + "]" * 20000 + "\n", "nests more than"),  # RecursionError before
    ("a: " + "{b: " * 5000 + "1" + "}" * 5000 + "\n", "nests more than"),
    ("a: &x [1, *x]\n", "refers to a node that holds it"),
    ("storage: &s {root: /tmp, type: local_fs}\nbandwidth: &b [*s, *s]\ndataset: &d [*b, *b, *b]\n"
     + "".join(f"k{i}: &k{i} [*{'d' if i == 0 else f'k{i - 1}'}, *{'d' if i == 0 else f'k{i - 1}'}, "
               f"*{'d' if i == 0 else f'k{i - 1}'}, *{'d' if i == 0 else f'k{i - 1}'}]\n" for i in range(12)),
     "expands to more than"),  # aliases of mappings
])
def test_yaml_that_expands_or_nests_without_end_is_refused_in_one_line(box, text, fragment):
    """A config of a few hundred bytes grew the load without end (aliases) or ended in
    'internal error: RecursionError' (nesting): now one line, exit 2, before anything runs."""
    path = os.path.join(box["top"], "bomb.yaml")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    for command in ("plan", "run", "preflight"):
        done = run_cli(0, command, path, f"storage.root={box['root']}", timeout=END_WITHIN_S)
        only_error(done, 2, f"config file {path}: ", fragment)
    assert os.listdir(box["root"]) == []


def test_override_that_expands_is_refused():
    """KEY=VALUE overrides are YAML too, read by the same bounded loader."""
    bomb = "[" + ", ".join(["&a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"] + ["*a"] * 3) + "]"
    nested = "[" * 5000 + "]" * 5000
    for value, fragment in ((nested, "nests more than"),):
        with pytest.raises(ConfigError, match=fragment):
            build_config({"storage": {"root": "/tmp/x"}}, [f"storage.endpoints={value}"])
    # a small alias is fine: bounds are on expansion, not on the use of aliases
    assert load_yaml(bomb)[1] == [1] * 10


def test_every_shipped_config_stays_within_the_bounds():
    """The bounds refuse nothing a configuration holds."""
    for name in sorted(os.listdir(os.path.join(REPO, "configs"))):
        if name.endswith(".yaml"):
            assert isinstance(config_mod.load_mapping(os.path.join(REPO, "configs", name)), dict)


def test_yaml_bounds_never_leak_a_recursion_error():
    """Nesting up to the bound loads; past it a ConfigError, even with a low recursion limit."""
    depth = config_mod.YAML_MAX_DEPTH - 1
    assert load_yaml("[" * depth + "]" * depth) is not None
    import sys

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(200)  # below what the composer needs for YAML_MAX_DEPTH levels
    try:
        with pytest.raises(ConfigError, match="nest"):
            load_yaml("[" * 60 + "]" * 60)
    finally:
        sys.setrecursionlimit(limit)


# -- 2. special files where a regular file is expected -----------------------------------------


def test_open_regular_refuses_each_special_file_without_blocking(tmp_path):
    """One helper for every read of a file mpibench did not create: a FIFO is refused at
    once (an open would wait for a writer for good), a device node is never opened."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    zero = char_device(str(tmp_path / "zero"), 1, 5)
    null = char_device(str(tmp_path / "null"), 1, 3)
    sock = unix_socket(str(tmp_path / "sock"))
    regular = tmp_path / "file"
    regular.write_bytes(b"x" * 100)
    link = tmp_path / "link"
    link.symlink_to(regular)
    cases = {str(fifo): "a FIFO (named pipe), not a regular file", zero: "a character device",
             null: "a character device", str(tmp_path / "sock"): "a socket, not",
             str(tmp_path): "a directory, not", "/dev/zero": "a character device"}
    result: dict[str, str] = {}

    def attempt() -> None:
        for path in cases:
            try:
                safeio.open_regular(path, 1 << 20)
                result[path] = "opened"
            except safeio.UnsafeFile as exc:
                result[path] = exc.strerror

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(END_WITHIN_S)
    sock.close()
    assert not worker.is_alive(), "open_regular blocked"
    for path, fragment in cases.items():
        assert fragment in result[path], (path, result[path])
    with pytest.raises(safeio.UnsafeFile, match="over the 99 bytes"):
        safeio.read_regular(str(regular), 99)
    assert safeio.read_regular(str(link), 100) == b"x" * 100
    with pytest.raises(OSError):
        safeio.open_regular(str(link), 100, follow=False)  # a data file's name: never followed
    assert os.path.exists(zero) and stat.S_ISCHR(os.lstat(zero).st_mode)


@pytest.mark.parametrize("kind", ["fifo", "zero", "socket"])
def test_report_and_compare_refuse_a_special_file(tmp_path, kind):
    """report and compare blocked on a FIFO and read /dev/zero until a MemoryError."""
    path = str(tmp_path / "result.json")
    keep = None
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "zero":
        char_device(path, 1, 5)
    else:
        keep = unix_socket(path)
    try:
        for args in (("report", path), ("compare", path, path)):
            done = run_cli(0, *args, timeout=END_WITHIN_S)
            only_error(done, 2, f"results file {path} is ", "not a regular file")
    finally:
        if keep is not None:
            keep.close()


def _datagen(box: dict[str, str], *extra: str, ranks: int = 0) -> Completed:
    return run_cli(ranks, "run", box["config"], *extra, "--output", box["output"], "--force",
                   timeout=END_WITHIN_S)


@pytest.mark.parametrize("where", ["manifest", "file"])
@pytest.mark.parametrize("kind", ["fifo", "zero", "socket"])
def test_a_special_file_in_the_dataset_ends_train_and_datagen(box, where, kind):
    """A FIFO at the manifest's or a dataset file's name blocked datagen, train and
    preflight for good; a socket made preflight exit 1 (an I/O error), not 2."""
    done = _datagen(box)
    assert done.returncode == 0, done.stderr
    folder = os.path.join(box["root"], "dataset")
    name = ".mpibench-dataset.json" if where == "manifest" else sorted(
        n for n in os.listdir(folder) if not n.startswith("."))[3]
    path = os.path.join(folder, name)
    os.unlink(path)
    keep = None
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "zero":
        char_device(path, 1, 5)
    else:
        keep = unix_socket(path)
    try:
        what = {"fifo": "a FIFO", "zero": "a character device", "socket": "a socket"}[kind]
        if where == "manifest":
            for command in ("preflight", "run"):
                output = ["--output", box["output"], "--force"] if command == "run" else []
                done = run_cli(2, command, box["config"], "workload=train", *output, timeout=END_WITHIN_S)
                only_error(done, 2, path, what)
            done = _datagen(box, "dataset.name=dataset")
            only_error(done, 2, path)
        else:
            done = run_cli(2, "run", box["config"], "workload=train", "--output", box["output"], "--force",
                           timeout=END_WITHIN_S)
            only_error(done, 1, path, what)
        assert stat.S_IFMT(os.lstat(path).st_mode) == {"fifo": stat.S_IFIFO, "zero": stat.S_IFCHR,
                                                       "socket": stat.S_IFSOCK}[kind]
    finally:
        if keep is not None:
            keep.close()


@pytest.mark.parametrize("content", [b"[" * 200_000, b"\xff\xfe" * 100, b"{" * 10 + b"x"])
def test_a_damaged_manifest_is_one_line(box, content):
    """A manifest nested past the JSON parser's depth ended in an internal RecursionError."""
    folder = os.path.join(box["root"], "dataset")
    os.mkdir(folder)
    with open(os.path.join(folder, ".mpibench-dataset.json"), "wb") as handle:
        handle.write(content)
    for workload in ("train", "datagen"):
        done = run_cli(0, "preflight", box["config"], f"workload={workload}", timeout=END_WITHIN_S)
        only_error(done, 2, "is not valid JSON")


def test_a_dataset_file_far_larger_than_any_of_the_dataset_is_not_read_to_the_end(box):
    """A sparse 1 TiB file at a dataset file's name was read (buffers doubled) until memory ran out."""
    assert _datagen(box).returncode == 0
    folder = os.path.join(box["root"], "dataset")
    name = sorted(n for n in os.listdir(folder) if not n.startswith("."))[2]
    with open(os.path.join(folder, name), "r+b") as handle:
        handle.truncate(2**40)
    done = run_cli(0, "run", box["config"], "workload=train", "train.decode=false", "--output", box["output"],
                   "--force", timeout=END_WITHIN_S)
    only_error(done, 1, os.path.join(folder, name), "far more than a file of this dataset")


@pytest.mark.parametrize("content, fragment", [
    ("fifo", "is a FIFO (named pipe), not a regular file"),
    (b"[default]\naws_access_key_id = \xff\xfe\naws_secret_access_key = x\n", "is not UTF-8 text (byte"),
])
def test_a_shared_credentials_file_that_is_not_a_text_file(box, content, fragment):
    """A FIFO as AWS_SHARED_CREDENTIALS_FILE blocked the preflight; a non-UTF-8 one gave
    'internal error: UnicodeDecodeError'."""
    path = os.path.join(box["top"], "credentials")
    if content == "fifo":
        os.mkfifo(path)
    else:
        with open(path, "wb") as handle:
            handle.write(content)
    env = {k: v for k, v in clean_env().items() if not k.startswith("AWS_")}
    env["AWS_SHARED_CREDENTIALS_FILE"] = path
    proc = subprocess.run(mpibench_cmd(0, "preflight", box["config"], "storage.type=s3",
                                       "storage.root=s3://bucket/p", "storage.endpoint=http://127.0.0.1:9"),
                          capture_output=True, text=True, timeout=END_WITHIN_S, env=env, stdin=subprocess.DEVNULL)
    only_error(Completed(proc.returncode, proc.stdout, proc.stderr, 0.0), 2,
               f"the shared credentials file {path} ", fragment)


# -- 3. work before checks ---------------------------------------------------------------------


@pytest.mark.parametrize("args, fragment", [
    (["workload=checkpoint", "checkpoint.ranks=131072"], "emulated ranks per checkpoint, more than 4096"),
    (["workload=checkpoint", "checkpoint.model=custom", "checkpoint.model_bytes=1GiB",
      "checkpoint.optimizer_bytes=1GiB", "checkpoint.tp=131072", "checkpoint.pp=131072"],
     "is not a multiple of tp x pp"),
    (["workload=checkpoint", "checkpoint.ranks=1000000"], "must be at most 131072"),
])
def test_huge_emulated_rank_counts_are_refused_before_any_shard_is_listed(box, args, fragment):
    """checkpoint.ranks of millions grew plan's and preflight's memory at ~150 MB/s."""
    for command in ("plan", "preflight"):
        done = run_cli(0, command, box["config"], *args, timeout=END_WITHIN_S)
        only_error(done, 2, fragment)
    assert os.listdir(box["root"]) == []


def test_train_says_no_dataset_before_sizing_its_files(box):
    """train sized every one of 10^8 files (seconds) before finding there is no dataset."""
    done = run_cli(0, "preflight", box["config"], "workload=train", "dataset.num_files=100000000",
                   "dataset.record_size_stdev=1000", timeout=END_WITHIN_S)
    only_error(done, 2, "no dataset at")


# -- 4. every numeric key has a range ---------------------------------------------------------


def numeric_keys() -> Iterator[tuple[str, dict]]:
    for section in dataclasses.fields(config_mod.Config):
        owner = config_mod.SECTIONS.get(section.name)
        fields = dataclasses.fields(owner) if owner else [section]
        for f in fields:
            if f.metadata.get("kind") in config_mod.NUMERIC_KINDS:
                yield (f"{section.name}.{f.name}" if owner else f.name), dict(f.metadata)


def test_every_numeric_key_declares_a_range_and_refuses_beyond_it():
    """Generic over all keys: the declared maximum is accepted, just past it (and 1e300 for
    a float) refused, naming the key."""
    keys = list(numeric_keys())
    assert len(keys) > 30
    for key, meta in keys:
        assert meta["minimum"] is not None and meta["maximum"] is not None, key
        top = meta["maximum"]
        assert config_mod._coerce(top if meta["kind"] == "float" else int(top), meta, key) == top
        over = [top * 2 + 1] + ([1e300, 1e10 * top] if meta["kind"] == "float" else [10**30])
        for value in over:
            if meta["kind"] not in ("float",):
                value = int(value)
            with pytest.raises(ConfigError, match=f"'{key}' must be at most"):
                config_mod._coerce(value, meta, key)


@pytest.mark.parametrize("override", ["metrics.interval=1e10", "bandwidth.deadline=1e300",
                                      "checkpoint.interval=1e12", "train.computation_time=1e20",
                                      "storage.timeout=1e15", "bandwidth.transfer_size=1000TiB"])
def test_numbers_that_broke_the_run_are_refused_before_it(box, override):
    """They ended in 'internal error', exit 1, with the run directory and its data left."""
    before = tree(box["root"])
    done = run_cli(0, "run", box["config"], "workload=bandwidth", "bandwidth.block_size=1MiB",
                   "bandwidth.transfer_size=1MiB", override, "--output", box["output"], timeout=END_WITHIN_S)
    only_error(done, 2, f"'{override.split('=')[0]}' must be at most")
    assert tree(box["root"]) == before and not os.path.exists(box["output"])


# -- 5. replacing what is not ours ------------------------------------------------------------


@pytest.mark.parametrize("option", ["--output", "--csv"])
@pytest.mark.parametrize("kind", ["device", "fifo", "symlink", "dangling"])
def test_force_replaces_only_a_regular_file(box, option, kind):
    """--output /dev/null --force (as root) replaced the system's /dev/null by a file."""
    path = os.path.join(box["top"], f"target-{kind}")
    target = os.path.join(box["top"], "somebody-elses.json")
    with open(target, "w") as handle:
        handle.write("theirs")
    if kind == "device":
        char_device(path, 1, 3)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink":
        os.symlink(target, path)
    else:
        os.symlink(os.path.join(box["top"], "nowhere"), path)
    args = ["--output", path] if option == "--output" else ["--output", box["output"], "--csv", path]
    before = os.lstat(path)
    for force in (["--force"], []):
        done = run_cli(0, "run", box["config"], "workload=bandwidth", "bandwidth.block_size=1MiB",
                       "bandwidth.transfer_size=1MiB", "bandwidth.iterations=1", *args, *force,
                       timeout=END_WITHIN_S)
        line = only_error(done, 2, f"{path} exists and is ", "not a regular file")
        assert "--force" not in line
        after = os.lstat(path)
        assert (after.st_mode, after.st_ino, after.st_rdev) == (before.st_mode, before.st_ino, before.st_rdev)
    with open(target) as handle:
        assert handle.read() == "theirs"


def test_force_still_replaces_a_regular_file(box):
    with open(box["output"], "w") as handle:
        handle.write("old")
    done = run_cli(0, "run", box["config"], "workload=bandwidth", "bandwidth.block_size=1MiB",
                   "bandwidth.transfer_size=1MiB", "bandwidth.iterations=1", "--output", box["output"], "--force",
                   timeout=END_WITHIN_S)
    assert done.returncode == 0, done.stderr
    with open(box["output"]) as handle:
        assert json.load(handle)["complete"] is True


def test_write_json_atomic_with_force_never_replaces_a_device(tmp_path):
    """The check at the end, not only the one before the run: a device node that appeared
    at the name meanwhile is left, and the results go to a fresh name beside it."""
    from mpibench.results import write_json_atomic

    node = char_device(str(tmp_path / "r.json"), 1, 3)
    with pytest.warns(UserWarning, match="appeared during the run"):
        written = write_json_atomic(node, {"run_id": "x", "a": 1}, force=True)
    assert written != node and stat.S_ISCHR(os.lstat(node).st_mode)


@pytest.mark.parametrize("name", ["00000005.npz", "sub/zzz", "stranger.txt"])
def test_datagen_refuses_a_folder_holding_any_file(box, name):
    """Preflight looked at the first and last file names only: a file at any other name
    was overwritten."""
    folder = os.path.join(box["root"], "dataset")
    path = os.path.join(folder, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        handle.write("theirs")
    before = tree(box["root"])
    done = _datagen(box)
    only_error(done, 2, f"dataset folder {folder} exists and holds {path}")
    assert tree(box["root"]) == before


def test_dataset_files_are_created_exclusively(tmp_path):
    """'x' opens a new file only: an existing one (or a link planted there) is an error."""
    from mpibench.backends.posix import LocalFsBackend
    from mpibench.config import StorageConfig

    backend = LocalFsBackend(StorageConfig(root=str(tmp_path)))
    (tmp_path / "taken").write_text("theirs")
    with pytest.raises(MpibenchError, match="File exists"):
        backend.open("taken", "x")
    os.symlink(tmp_path / "taken", tmp_path / "link")
    with pytest.raises(MpibenchError, match="File exists"):
        backend.open("link", "x")
    assert (tmp_path / "taken").read_text() == "theirs"
    handle = backend.open("new", "x")
    backend.close(handle)


def test_two_datagen_runs_into_one_folder(box):
    """Both exited 0 and overwrote each other's files; now one claims the folder and the
    other is refused (exit 2), whatever their timing."""
    cmd = mpibench_cmd(2, "run", box["config"], "dataset.num_files=64", "--output")
    procs = [subprocess.Popen([*cmd, os.path.join(box["top"], f"r{i}.json")], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=clean_env(), stdin=subprocess.DEVNULL)
             for i in range(2)]
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=END_WITHIN_S * 2)
        done.append(Completed(proc.returncode, out, err, 0.0))
    codes = sorted(d.returncode for d in done)
    assert codes == [0, 2], [(d.returncode, d.stderr) for d in done]
    loser = next(d for d in done if d.returncode == 2)
    only_error(loser, 2, os.path.join(box["root"], "dataset"))
    winner = next(i for i, d in enumerate(done) if d.returncode == 0)
    with open(os.path.join(box["top"], f"r{winner}.json")) as handle:
        run_id = json.load(handle)["run_id"]
    with open(os.path.join(box["root"], "dataset", ".mpibench-dataset.json")) as handle:
        manifest = json.load(handle)
    assert manifest["complete"] is True and manifest["run_id"] == run_id
    done = run_cli(2, "run", box["config"], "workload=train", "verify=true", "dataset.num_files=64", "--output",
                   box["output"], "--force", timeout=END_WITHIN_S)
    assert done.returncode == 0, done.stderr  # every byte is the winner's


# -- 6. secrets ---------------------------------------------------------------------------------


SECRET = "s3cr3tPASSw0rd"


def test_redact_masks_url_credentials_and_signatures():
    env = {"AWS_SECRET_ACCESS_KEY": "abcdSECRETkey"}
    for text, gone in ((f"http://user:{SECRET}@host:9000/x", SECRET), (f"https://{SECRET}@h", SECRET),
                       (f"see s3://a:{SECRET}@b/c and ftp://u:{SECRET}@h", SECRET),
                       (f"?X-Amz-Signature={SECRET}&x=1", SECRET), ("key abcdSECRETkey here", "abcdSECRETkey"),
                       (json.dumps({"endpoint": f"http://u:{SECRET}@h"}), SECRET)):
        assert gone not in redact(text, env), text
    assert redact("http://host:9000/path?a=b user@example", env) == "http://host:9000/path?a=b user@example"


def test_redacting_stream_redacts_a_url_split_over_writes():
    out = io.StringIO()
    stream = RedactingStream(out)
    for piece in ("endpoint http://us", f"er:{SECRET[:4]}", f"{SECRET[4:]}@h", "ost/ down\n", "tail http://a:"):
        stream.write(piece)
    stream.write(f"{SECRET}@x")
    stream.flush()
    assert SECRET not in out.getvalue() and "http://***@host/ down" in out.getvalue()


@pytest.mark.parametrize("how", ["storage.endpoint", "storage.endpoints", "AWS_ENDPOINT_URL"])
def test_a_password_in_an_endpoint_url_is_never_printed(box, how):
    """The error line printed `http://user:PASS@host`."""
    url = f"http://admin:{SECRET}@127.0.0.1:9"
    env = {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLEKEYID", "AWS_SECRET_ACCESS_KEY": "examplesecretvalue"}
    args = ["storage.type=s3", "storage.root=s3://bucket/p"]
    if how == "AWS_ENDPOINT_URL":
        env[how] = url
        env["AWS_ENDPOINT_URL_S3"] = ""  # one inherited from this process's S3 tests would win over it
    else:
        args.append(f"{how}={url if how == 'storage.endpoint' else '[' + url + ']'}")
    for command in ("preflight", "run", "plan"):
        extra = ["--json"] if command == "plan" else []
        done = run_cli(0, command, box["config"], *args, *extra, "--debug", env=env, timeout=END_WITHIN_S)
        assert SECRET not in done.stdout + done.stderr, (command, done.stdout, done.stderr)
        if command != "plan":
            assert done.returncode == 2 and "***@127.0.0.1:9" in done.stderr, done.stderr


def test_results_never_hold_url_credentials(tmp_path):
    from mpibench.csvout import write_csv
    from mpibench.results import write_json_atomic

    doc = {"run_id": "x", "config": {"storage": {"endpoint": f"http://u:{SECRET}@h"}},
           "environment": {"argv": ["mpibench", f"storage.endpoint=http://u:{SECRET}@h"]}, "phases": []}
    for path in (write_json_atomic(str(tmp_path / "r.json"), doc), write_csv(str(tmp_path / "r.csv"), doc)):
        with open(path) as handle:
            assert SECRET not in handle.read()


# -- 7. exit codes and lines ------------------------------------------------------------------


@pytest.mark.parametrize("root", ["direct://{root}", "file://{root}"])
def test_storage_root_schemes_per_type(box, root):
    """local_fs with a direct:// root ran buffered I/O without a word."""
    given = root.format(root=box["root"])
    done = run_cli(0, "plan", box["config"], f"storage.root={given}", timeout=END_WITHIN_S)
    if given.startswith("direct://"):
        only_error(done, 2, "asks for O_DIRECT", "storage.type=direct_fs")
        done = run_cli(0, "plan", box["config"], f"storage.root={given}", "storage.type=direct_fs",
                       timeout=END_WITHIN_S)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("fmt, target", [("hdf5", "labels"), ("npz", "labels"), ("hdf5", "header"),
                                         ("raw", "records")])
def test_verify_covers_every_byte_datagen_wrote(box, fmt, target):
    """An HDF5 file whose label bytes were changed passed verify: true."""
    from mpibench.formats import file_labels

    done = _datagen(box, f"dataset.format={fmt}")
    assert done.returncode == 0, done.stderr
    cfg = build_config({"workload": "datagen", "storage": {"root": box["root"]},
                        "dataset": {"num_files": 8, "record_size": 4096, "samples_per_file": 2, "format": fmt}})
    folder = os.path.join(box["root"], "dataset")
    name = sorted(n for n in os.listdir(folder) if not n.startswith("."))[1]
    path = os.path.join(folder, name)
    with open(path, "rb") as handle:
        data = bytearray(handle.read())
    if target == "labels":
        labels = file_labels(cfg.dataset, 1).tobytes()
        offset = data.find(labels)
        assert offset >= 0
        offset += len(labels) - 1
    elif target == "header":
        offset = 40  # inside the HDF5 superblock
    else:
        offset = len(data) // 2
    data[offset] ^= 0x01
    with open(path, "wb") as handle:
        handle.write(data)
    done = run_cli(0, "run", box["config"], "workload=train", f"dataset.format={fmt}", "verify=true",
                   "train.shuffle=off", "--output", box["output"], "--force", timeout=END_WITHIN_S)
    line = only_error(done, 1, path)
    assert "differs" in line or "not a readable" in line, line


def test_memory_preflight_reads_cgroup_v1_and_v2_hierarchies(tmp_path):
    """The cgroup v1 memory controller (common under Slurm) was ignored; a parent's limit
    binds its child in both versions. Read from files laid out as the kernel does."""
    (tmp_path / "proc").mkdir()
    cg = tmp_path / "proc" / "cgroup"
    v1 = tmp_path / "memory" / "slurm" / "job_1" / "step_0"
    v1.mkdir(parents=True)
    (tmp_path / "memory" / "slurm" / "job_1" / "memory.limit_in_bytes").write_text(str(8 << 30))
    (tmp_path / "memory" / "slurm" / "job_1" / "memory.usage_in_bytes").write_text(str(2 << 30))
    (v1 / "memory.limit_in_bytes").write_text("9223372036854771712")
    (v1 / "memory.usage_in_bytes").write_text(str(2 << 30))
    cg.write_text("4:memory:/slurm/job_1/step_0\n1:cpu:/\n0::/\n")
    assert environment._cgroup_memory_left(str(cg), str(tmp_path)) == 6 << 30
    v2 = tmp_path / "user.slice" / "job"
    v2.mkdir(parents=True)
    (tmp_path / "user.slice" / "memory.max").write_text(str(3 << 30))
    (tmp_path / "user.slice" / "memory.current").write_text(str(1 << 30))
    (v2 / "memory.max").write_text("max")
    (v2 / "memory.current").write_text(str(1 << 30))
    cg.write_text("0::/user.slice/job\n")
    assert environment._cgroup_memory_left(str(cg), str(tmp_path)) == 2 << 30
    cg.write_text("0::/user.slice/job\n4:memory:/slurm/job_1/step_0\n")
    assert environment._cgroup_memory_left(str(cg), str(tmp_path)) == 2 << 30


def _cgroup_v1_memory() -> str | None:
    path = "/sys/fs/cgroup/memory"
    return path if os.path.exists(os.path.join(path, "memory.limit_in_bytes")) else None


def test_a_real_cgroup_v1_memory_limit_refuses_the_run(box):
    """A rank was OOM-killed mid-run (exit 9, run directory left) under a v1 limit."""
    base = _cgroup_v1_memory()
    if base is None:
        pytest.skip("no cgroup v1 memory controller here")
    group = os.path.join(base, f"mpibench-test-{os.getpid()}")
    try:
        os.mkdir(group)
    except OSError as exc:
        pytest.skip(f"cannot create a cgroup: {exc}")
    try:
        with open(os.path.join(group, "memory.limit_in_bytes"), "w") as handle:
            handle.write(str(768 << 20))
        cmd = mpibench_cmd(0, "run", box["config"], "workload=bandwidth", "bandwidth.transfer_size=512MiB",
                           "bandwidth.block_size=512MiB", "bandwidth.iterations=1", "--output", box["output"])
        script = f"echo $$ > {group}/cgroup.procs && exec \"$@\""
        proc = subprocess.run(["sh", "-c", script, "sh", *cmd], capture_output=True, text=True,
                              timeout=END_WITHIN_S, env=clean_env(), stdin=subprocess.DEVNULL)
        only_error(Completed(proc.returncode, proc.stdout, proc.stderr, 0.0), 2, "of I/O buffers", "more than the")
        assert os.listdir(box["root"]) == []
    finally:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.rmdir(group)
                break
            except OSError:
                time.sleep(0.1)


def _mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a test filesystem here ({done.stderr.strip()})")


@pytest.fixture
def mounted(tmp_path) -> Iterator[str]:
    point = str(tmp_path / "mnt")
    os.mkdir(point)
    yield point
    subprocess.run(["umount", "-l", point], capture_output=True)


def test_ramfs_says_o_direct_is_refused_not_no_space(box, mounted):
    """ramfs reports no size: the line said '0 B free' where O_DIRECT is the problem."""
    _mount("-t", "ramfs", "ramfs", mounted)
    done = run_cli(0, "preflight", box["config"], "workload=bandwidth", "storage.type=direct_fs",
                   f"storage.root={mounted}/root", "bandwidth.block_size=1MiB", "bandwidth.transfer_size=1MiB",
                   timeout=END_WITHIN_S)
    line = only_error(done, 2, "refuses O_DIRECT")
    assert "free" not in line
    done = run_cli(0, "preflight", box["config"], "workload=bandwidth", f"storage.root={mounted}/root",
                   "bandwidth.block_size=1MiB", "bandwidth.transfer_size=1MiB", timeout=END_WITHIN_S)
    assert done.returncode == 0 and "reports no size" in done.stdout, done.stdout + done.stderr


def test_inode_exhaustion_is_named_as_such(box, mounted):
    """The hint said 'free space' where no inode was left."""
    _mount("-t", "tmpfs", "-o", "size=64m,nr_inodes=64", "tmpfs", mounted)
    index = 0
    while True:
        try:
            open(os.path.join(mounted, f"f{index}"), "w").close()
        except OSError:
            break
        index += 1
    done = run_cli(0, "preflight", box["config"], "workload=bandwidth", f"storage.root={mounted}",
                   "bandwidth.block_size=1MiB", "bandwidth.transfer_size=1MiB", timeout=END_WITHIN_S)
    only_error(done, 2, "no free inodes")
    from mpibench.backends.base import io_error

    line = io_error("open", os.path.join(mounted, "new"), OSError(28, "No space left on device")).line()
    assert "no free inodes" in line and "free space" not in line


# -- the same classes on the real S3 server -----------------------------------------------------

from s3fixture import PREFIX, assert_untouched, s3_fixture  # noqa: E402,F401


@pytest.mark.s3
def test_s3_datagen_refuses_a_prefix_holding_any_object(s3, box):
    """Preflight looked at the first and last object names only, and s3dlio sends no
    conditional PUT: a listing of the dataset prefix (one key at most) is the check."""
    dataset = f"{PREFIX}-rel2-ds"
    stranger = f"{PREFIX}/{dataset}/00000003.npz"
    status, _ = s3.request("PUT", f"/{s3.bucket}/{stranger}", body=b"theirs")
    assert status == 200
    before = s3.listing()
    try:
        done = run_cli(2, "run", box["config"], "storage.type=s3", f"storage.root={s3.root}",
                       f"dataset.name={dataset}", "--output", box["output"], env=s3.cli_env(), timeout=120)
        only_error(done, 2, f"exists and holds s3://{s3.bucket}/{stranger}")
        assert s3.listing() == before
    finally:
        s3.delete([stranger])


@pytest.mark.s3
def test_s3_endpoint_credentials_are_redacted_everywhere(s3, box):
    """A user and password in the endpoint URL reached the error line and the results."""
    host = s3.endpoint.split("://", 1)[1]
    url = f"http://admin:{SECRET}@{host}"
    before = s3.listing()
    for override in (f"storage.endpoint={url}",):
        done = run_cli(0, "run", box["config"], "workload=bandwidth", "bandwidth.block_size=1MiB",
                       "bandwidth.transfer_size=1MiB", "bandwidth.iterations=1", "storage.type=s3",
                       f"storage.root={s3.root}", override, "--output", box["output"], "--force", "--debug",
                       env=s3.cli_env(), timeout=120)
        text = done.stdout + done.stderr
        if os.path.exists(box["output"]):
            with open(box["output"]) as handle:
                text += handle.read()
        assert SECRET not in text, text[-3000:]
    assert_untouched(s3, before)


@pytest.mark.s3
def test_a_failed_s3_run_that_cannot_clean_up_names_its_marker(tmp_path):
    """The server went away mid-run: the run's objects and its .mpibench-run marker stayed
    in the bucket with no word; now a warning names them (the error line stays the run's)."""
    import sys

    sys.path.insert(0, os.path.dirname(__file__))
    from test_s3_faults import _held_before_read, _one_error_line, _started_server

    server = _started_server()
    try:
        proc, hold, _output = _held_before_read(server, tmp_path, "bandwidth.block_size=8MiB")
        server.stop()
        (hold / "resume").touch()
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        server.stop()
    _one_error_line(proc, stdout, stderr, server)
    warned = [line for line in stderr.splitlines() if line.startswith("mpibench: warning: the cleanup after")]
    assert len(warned) == 1 and ".mpibench-run marker" in warned[0] and "s3://faults/run/mpibench-" in warned[0], \
        stderr


@pytest.mark.s3
def test_writes_of_uploads_that_never_completed_do_not_count(tmp_path):
    """The S3 server paused (SIGSTOP) before the writes: s3dlio acknowledges every part it
    queues, and the partial result counted the full bytes although no upload completed."""
    import signal as signal_mod

    from test_s3_faults import _started_server

    server = _started_server()
    hold = tmp_path / "hold"
    hold.mkdir()
    output = tmp_path / "result.json"
    env = clean_env({**server.env(), "MPIBENCH_FAULT": f"pause:phase=write:dir={hold}"})
    proc = subprocess.Popen(
        mpibench_cmd(2, "run", os.path.join(REPO, "configs", "s3.yaml"), "storage.root=s3://faults/paused",
                     "bandwidth.iterations=1", "bandwidth.block_size=24MiB", "bandwidth.transfer_size=1MiB",
                     "storage.part_size=5MiB", "storage.parts_in_flight=8", "storage.timeout=2",
                     "storage.retries=0", "--output", str(output)),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    pid = server._proc.pid  # the weed process of this test's own server
    try:
        deadline = time.monotonic() + 60
        while not (hold / "paused").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the run never reached its write phase"
            time.sleep(0.05)
        os.kill(pid, signal_mod.SIGSTOP)
        (hold / "resume").touch()
        stdout, stderr = proc.communicate(timeout=150)
    finally:
        os.kill(pid, signal_mod.SIGCONT)
        if proc.poll() is None:
            proc.kill()
        server.stop()
    assert proc.returncode == 1, stderr
    assert "Traceback" not in stdout + stderr
    document = json.loads(output.read_text())
    assert document["complete"] is False
    write = next(p for p in document["phases"] if p["name"] == "write")
    assert write["complete"] is False
    for rank in write["ranks"]:
        # every write the server acknowledged (s3dlio queues parts) is uncommitted, none moved
        assert rank["ops"] > 0 and rank.get("uncommitted_bytes") == rank["ops"] * 2**20, rank
        assert rank["bytes"] == 0, rank
    assert write["bytes"] == sum(r["bytes"] for r in write["ranks"]) == 0


@pytest.mark.s3
def test_two_s3_datagen_runs_into_one_prefix(s3, box):
    """The claim on S3 is a conditional PUT of the manifest (If-None-Match: *)."""
    dataset = f"{PREFIX}-rel2-twice"
    env = s3.cli_env()
    cmd = mpibench_cmd(2, "run", box["config"], "storage.type=s3", f"storage.root={s3.root}",
                       f"dataset.name={dataset}", "dataset.num_files=32", "--output")
    procs = [subprocess.Popen([*cmd, os.path.join(box["top"], f"s{i}.json")], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=clean_env(env), stdin=subprocess.DEVNULL)
             for i in range(2)]
    try:
        outputs = [p.communicate(timeout=180) for p in procs]
        done = [Completed(p.returncode, out, err, 0.0) for p, (out, err) in zip(procs, outputs, strict=True)]
        assert sorted(d.returncode for d in done) == [0, 2], [(d.returncode, d.stderr) for d in done]
        only_error(next(d for d in done if d.returncode == 2), 2, dataset)
        winner = next(i for i, d in enumerate(done) if d.returncode == 0)
        with open(os.path.join(box["top"], f"s{winner}.json")) as handle:
            run_id = json.load(handle)["run_id"]
        status, body = s3.request("GET", f"/{s3.bucket}/{PREFIX}/{dataset}/.mpibench-dataset.json")
        assert status == 200 and json.loads(body)["run_id"] == run_id
    finally:
        s3.delete(list(s3.listing(f"{PREFIX}/{dataset}/")))


def test_create_exclusive_is_one_winner(tmp_path):
    """Of many threads claiming one name at once, exactly one succeeds."""
    from mpibench.backends.posix import LocalFsBackend
    from mpibench.config import StorageConfig

    backend = LocalFsBackend(StorageConfig(root=str(tmp_path)))
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def claim(n: int) -> None:
        barrier.wait()
        results.append(backend.create_exclusive("claim", f"{n}".encode()))

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 7 + [True]
