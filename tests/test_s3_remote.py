"""The DVC remote on S3, for real: moto's S3 server on loopback, the dvc CLI, the committed pipeline shrunk.

Push with the run-cache, clone, pull: status is clean (but for the always-changed download stage, which only
stats the data), `dvc repro` reruns nothing else and the outputs are
byte-identical. A params variant reproduced only at the origin comes back from the remote's run-cache in the
clone through `dvc repro --pull` (restored, not rerun).
"""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import make_project, stale
from test_pipeline import set_param, shrink

TARGET = "extract@resnet18"  # download -> crop -> extract of one backbone
UPSTREAM = {"sample", "download", "crop", TARGET}
ALWAYS = {"download"}  # always_changed: reruns on every repro, changing nothing when the data did not change
OUTPUTS = ["data/raw", "data/crops", "data/features/resnet18", "metrics/data_quality"]
BUCKET = "covidct-dvc"
GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def aws_env(tmp: Path) -> dict:
    """dvc's environment: fake credentials, no user AWS config or profile, the venv's python first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return {**env, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": str(tmp / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "no-aws-credentials"), "DVC_NO_ANALYTICS": "1",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def s3_client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing")


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server on 127.0.0.1:<free port> with an empty bucket; yields (endpoint, env)."""
    tmp = tmp_path_factory.mktemp("moto")
    env = aws_env(tmp)
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = (tmp / "moto.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"moto server did not answer on {endpoint}:\n{(tmp / 'moto.log').read_text()}")
                time.sleep(0.2)
        s3_client(endpoint).create_bucket(Bucket=BUCKET)
        yield endpoint, env
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def dvc(cwd: Path, env: dict, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if ok:
        assert result.returncode == 0, f"dvc {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result


def ran(result: subprocess.CompletedProcess) -> set[str]:
    return {line.split("'")[1] for line in result.stdout.splitlines() if line.startswith("Running stage '")}


def commit(work: Path, message: str) -> None:
    subprocess.run(["git", "add", "-A"], cwd=work, check=True)
    subprocess.run([*GIT, "commit", "-q", "-m", message], cwd=work, check=True)
    status = subprocess.run(["git", "status", "--porcelain"], cwd=work, check=True, capture_output=True, text=True)
    assert status.stdout == "", f"left out of the commit:\n{status.stdout}"


def snapshot(work: Path) -> dict[str, bytes]:
    files = {}
    for out in OUTPUTS:
        for path in sorted((work / out).rglob("*")):
            if path.is_file():
                files[str(path.relative_to(work))] = path.read_bytes()
    assert files and any(name.startswith("data/features/resnet18/") for name in files)
    return files


def clone(origin: Path, dest: Path) -> Path:
    subprocess.run(["git", "clone", "-q", str(origin), str(dest)], check=True)
    assert not (dest / ".dvc/cache").exists(), "the clone must get its data from the remote, not from git"
    return dest


@pytest.mark.slow
def test_push_clone_pull_reruns_nothing(s3, tmp_path):
    endpoint, env = s3
    origin = make_project(tmp_path / "origin", shrink)
    assert ran(dvc(origin, env, "repro", TARGET)) == UPSTREAM
    dvc(origin, env, "remote", "add", "-d", "storage", f"s3://{BUCKET}/cache")
    dvc(origin, env, "remote", "modify", "storage", "endpointurl", endpoint)
    commit(origin, "dvc.lock, outputs kept in git, the remote")  # .dvc/config and dvc.lock travel with the clone
    expected = snapshot(origin)

    # A variant reproduced and pushed at the origin, its dvc.lock never committed: only the run-cache knows it.
    # `push --run-cache` sends every run-cache entry but only the data of the dvc.lock at hand: push the variant's
    # data while it is checked out. `repro --pull` then fetches the run-cache and the hit's outputs.
    set_param(origin, "backbones.resnet18.image_size", 48)
    assert ran(dvc(origin, env, "repro", TARGET)) == ALWAYS | {TARGET}
    variant = snapshot(origin)
    assert variant != expected
    dvc(origin, env, "push", "--with-deps", TARGET)
    subprocess.run(["git", "reset", "-q", "--hard"], cwd=origin, check=True)  # core.autostage staged dvc.lock
    dvc(origin, env, "checkout", TARGET)
    assert snapshot(origin) == expected

    dvc(origin, env, "push", "--run-cache", "--with-deps", TARGET)
    pages = s3_client(endpoint).get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
    keys = [obj["Key"] for page in pages for obj in page.get("Contents", [])]
    assert any(k.startswith("cache/files/md5/") for k in keys) and any(k.startswith("cache/runs/") for k in keys)

    work = clone(origin, tmp_path / "clone")
    dvc(work, env, "pull", "--run-cache", "--with-deps", TARGET)  # dvc.lock has only TARGET and upstream
    assert stale(work, "--with-deps", TARGET, env=env) == {}
    assert ran(dvc(work, env, "repro", TARGET)) == ALWAYS, "a clone that pulled may rerun nothing"
    assert snapshot(work) == expected, "pulled outputs differ from the origin's"

    set_param(work, "backbones.resnet18.image_size", 48)
    result = dvc(work, env, "repro", "--pull", TARGET)  # --pull: fetch the outputs of a run-cache hit
    assert ran(result) == ALWAYS and f"Stage '{TARGET}' is cached - skipping run" in result.stdout, result.stdout
    assert snapshot(work) == variant, "the variant restored from the remote's run-cache differs from the origin's"

    # Control: a clone that pulled nothing is not up to date, so the checks above are not vacuous.
    control = clone(origin, tmp_path / "control")
    assert stale(control, "--with-deps", TARGET, env=env) != {}


def test_push_to_unreachable_endpoint_fails_clearly(tmp_path):
    """A wrong endpointurl: dvc push exits non-zero and names the endpoint it could not reach."""
    env = {**aws_env(tmp_path), "AWS_MAX_ATTEMPTS": "1"}  # botocore's retries take ~20 s to give up otherwise
    work = tmp_path / "work"
    work.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=work, check=True)
    dvc(work, env, "init", "-q")
    (work / "data.txt").write_text("data\n")
    dvc(work, env, "add", "data.txt")
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    dvc(work, env, "remote", "add", "-d", "storage", f"s3://{BUCKET}/cache")
    dvc(work, env, "remote", "modify", "storage", "endpointurl", endpoint)
    result = dvc(work, env, "push", ok=False)
    assert result.returncode != 0
    assert f'Could not connect to the endpoint URL: "{endpoint}/' in result.stderr, result.stderr
