"""A real S3 server for the tests: SeaweedFS (`weed mini`) on loopback, shared by every rank.

Import the fixture (named ``s3``) into a test module with
``from s3fixture import s3_fixture  # noqa: F401``.
Under ``mpiexec ... pytest --with-mpi`` rank 0 starts the server and broadcasts its
endpoint and credentials; every rank puts them into os.environ before its first s3dlio
call (s3dlio reads its settings once per process). The server, its data directory and
its credentials file are removed at the end of the session.

The bucket holds a few objects that no test writes (one of them under the prefix the
tests use): every test checks they are still there, unchanged, after its run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from conftest import world

from mpibench.s3server import LocalS3Server, S3ServerError, find_weed, parse_list, signed_request

BUCKET = "mpibench-test"
PREFIX = "bench"
#: objects that exist before any run and must survive every run untouched
PREEXISTING = {
    "keep/precious.bin": b"not mpibench's\n" * 100,
    f"{PREFIX}/not-ours.bin": b"a neighbour's object under the same prefix\n",
    f"{PREFIX}-sibling/x.bin": b"a prefix that only starts like ours\n",
}
#: variables a test's subprocess must not inherit from the pytest process
_STRIP = ("AWS_", "S3DLIO_")


@dataclass
class S3Server:
    """What a test needs to use the server (the same on every rank)."""

    endpoint: str
    access_key: str
    secret_key: str
    region: str
    bucket: str = BUCKET
    env: dict[str, str] = field(default_factory=dict)

    @property
    def root(self) -> str:
        """The storage.root the tests use."""
        return f"s3://{self.bucket}/{PREFIX}"

    def request(self, method: str, path: str, **kwargs: object) -> tuple[int, bytes]:
        """A signed request with the server's credentials (no s3dlio involved)."""
        status, _headers, body = signed_request(
            self.endpoint, method, path, access_key=self.access_key, secret_key=self.secret_key,
            region=self.region, **kwargs)  # type: ignore[arg-type]
        return status, body

    def listing(self, prefix: str = "") -> dict[str, int]:
        """Every object of the bucket below `prefix` with its size (ListObjectsV2)."""
        found: dict[str, int] = {}
        token = None
        while True:
            query = {"list-type": "2", "prefix": prefix}
            if token:
                query["continuation-token"] = token
            status, body = self.request("GET", f"/{self.bucket}", query=query)
            assert status == 200, body[:300]
            page, token = parse_list(body)
            found.update(page)
            if not token:
                return found

    def delete(self, keys: list[str]) -> None:
        """Delete objects by key (test cleanup of kept datasets)."""
        for key in keys:
            status, body = self.request("DELETE", f"/{self.bucket}/{key}")
            assert status in (200, 204), body[:300]

    def bucket_exists(self, name: str) -> bool:
        """True when bucket `name` exists."""
        status, _ = self.request("GET", f"/{name}", query={"list-type": "2", "max-keys": "1"})
        return status == 200

    def cli_env(self, **overrides: str) -> dict[str, str]:
        """An environment for `mpiexec ... mpibench`: ours without AWS_*/S3DLIO_*, plus the server's."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(_STRIP)}
        env.update(self.env)
        env["AWS_ENDPOINT_URL_S3"] = self.endpoint  # wins over anything inherited
        env.update(overrides)
        return env


def _start() -> tuple[LocalS3Server, S3Server]:
    server = LocalS3Server()
    server.start()
    try:
        server.create_bucket(BUCKET)
        for key, data in PREEXISTING.items():
            server.put_object(BUCKET, key, data)
    except BaseException:
        server.stop()
        raise
    info = S3Server(server.endpoint, server.access_key, server.secret_key, server.region, env=server.env())
    return server, info


#: The one server of this test process: every module imports the fixture, and pytest makes a
#: session fixture of each import, but s3dlio keeps the first credentials it was given for the
#: life of the process, so a second server (new keys) would be refused by the first's client.
_SESSION: dict[str, tuple[str, object]] = {}


def _session_outcome() -> tuple[str, object]:
    """Start the server once per process (rank 0 of a parallel run), or say why not."""
    if "outcome" in _SESSION:
        return _SESSION["outcome"]
    comm = world()
    parallel = comm is not None and comm.Get_size() > 1
    outcome: tuple[str, object] | None = None
    if not parallel or comm.Get_rank() == 0:
        try:
            find_weed()
            server, info = _start()
            outcome = ("ok", info)
        except S3ServerError as exc:
            outcome = ("skip" if "not found" in str(exc) else "error", str(exc))
    if parallel:
        outcome = comm.bcast(outcome, root=0)
    assert outcome is not None
    _SESSION["outcome"] = outcome
    return outcome


@pytest.fixture(scope="session", name="s3")
def s3_fixture() -> Iterator[S3Server]:
    """A running S3 server with bucket BUCKET, its credentials exported in this process
    (the same server for every test module of the process; LocalS3Server stops it at exit)."""
    kind, value = _session_outcome()
    if kind == "skip":
        pytest.skip(f"no S3 server for the tests: {value}")
    if kind == "error":
        pytest.fail(f"the local S3 server did not start: {value}")
    assert isinstance(value, S3Server)
    os.environ.update(value.env)  # before this process's first s3dlio call
    yield value


def assert_untouched(s3: S3Server, before: dict[str, int]) -> None:
    """The bucket holds exactly what it held before, and the pre-existing objects are intact."""
    assert s3.listing() == before
    for key, data in PREEXISTING.items():
        status, body = s3.request("GET", f"/{s3.bucket}/{key}")
        assert status == 200 and body == data, key
