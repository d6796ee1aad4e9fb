"""A catalog published to an S3-compatible store (a real moto server on 127.0.0.1) and served by
two `linkedout serve` processes, as two hosts would: each catalog add or remove reaches both
within seconds, no request fails meanwhile, and a replica that loses the store keeps serving."""

from __future__ import annotations

import json
import shutil
import time

import pytest

from linkedout.errors import LinkedOutError
from linkedout.recommend.catalog_location import LOCATION_FILE
from linkedout.recommend.evaluate import evaluate_run
from linkedout.service.catalog_changes import add_items, publish_catalog, remove_items
from linkedout.testing.s3 import make_bucket
from tests.cli_harness import assert_one_line_error, run_linkedout
from tests.conftest import moto_server
from tests.recommend.planted import write_new_items
from tests.service.conftest import ranking_clients

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "us-east-1",
}


@pytest.fixture
def credentials(monkeypatch):
    """Credentials as each host gives them: in the environment, never in the run."""
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    return CREDENTIALS


def _host(run, tmp_path, name: str):
    """The run directory as another host holds it: a copy without the local catalog, so the
    replica can only have read the published one."""
    copy = shutil.copytree(run, tmp_path / name)
    shutil.rmtree(copy / "catalog.lance")
    return copy


def test_two_replicas_follow_every_catalog_change_within_seconds_without_a_failed_request(
    run_copy, planted, serve, s3_server, credentials, tmp_path
):
    uri = "s3://replicas/runs/a/catalog.lance"
    options = make_bucket(s3_server, "replicas")
    before = evaluate_run(run_copy, splits=("test",)).to_json()
    published = publish_catalog(run_copy, uri, options)
    assert (published.version, published.num_rows) == (1, 241)
    location = json.loads((run_copy / LOCATION_FILE).read_text())
    assert location == {
        "uri": uri,
        "storage_options": {
            "aws_endpoint": s3_server,
            "allow_http": "true",
            "aws_region": "us-east-1",
        },
    }  # the keys stayed out
    # Evaluation reads version 1 where the catalog now lives: the same figures.
    assert evaluate_run(run_copy, splits=("test",)).to_json() == before

    replicas = [
        serve(_host(run_copy, tmp_path, name), "--poll-seconds", "0.5", env=credentials)
        for name in ("host-a", "host-b")
    ]
    new = write_new_items(tmp_path / "new.lance", planted, cluster=2, n=20)
    with ranking_clients(replicas, per_server=2) as (responses, failures):
        for version, change in (
            (2, lambda: add_items(run_copy, str(tmp_path / "new.lance"))),
            (3, lambda: remove_items(run_copy, new[:5])),
        ):
            assert change().version == version
            changed_at = time.monotonic()
            waiting = set(range(len(replicas)))
            while waiting and time.monotonic() - changed_at < 10:
                for i in sorted(waiting):
                    with replicas[i].client() as http:
                        if http.get("/readyz").json()["catalog_version"] == version:
                            waiting.discard(i)
                time.sleep(0.05)
            assert not waiting, (
                f"replicas {sorted(waiting)} still serve an older version after 10 s"
            )
    assert not failures, failures[:3]
    assert {r["catalog_version"] for r in responses} == {1, 2, 3}
    for r in responses:  # every answer is one whole version: all of its items, nothing else
        ids = {i["item_id"] for i in r["items"]}
        expected_new = {1: set(), 2: set(new), 3: set(new[5:])}[r["catalog_version"]]
        assert ids & set(new) == expected_new
        assert len(ids) == 239 + len(expected_new)
    for replica in replicas:
        with replica.client() as http:
            assert http.get("/metadata").json()["catalog"] == {
                "version": 3,
                "size": 255,
                "added": 15,
            }


def test_publishing_refuses_a_taken_place_and_changes_nothing(
    run_copy, s3_server, credentials, tmp_path
):
    options = make_bucket(s3_server, "taken")
    taken = "s3://taken/prefix"
    publish_catalog(run_copy, taken + "/first", options)
    other = shutil.copytree(run_copy, tmp_path / "other")
    (other / LOCATION_FILE).unlink()  # a second run: its own catalog again
    proc = run_linkedout(
        ["catalog", "publish", other, taken + "/first", *_flags(options)], env=CREDENTIALS
    )
    assert_one_line_error(proc, "already holds a Lance dataset: publish to a new path")
    assert not (other / LOCATION_FILE).exists()
    with pytest.raises(LinkedOutError, match="is already at"):
        publish_catalog(run_copy, taken + "/first", options)
    unreachable = {**options, "aws_endpoint": "http://127.0.0.1:9", "client_max_retries": "0"}
    with pytest.raises(LinkedOutError, match="cannot publish to .*cannot reach the object store"):
        publish_catalog(other, "s3://taken/elsewhere", unreachable)
    assert not (other / LOCATION_FILE).exists()


def test_a_replica_that_loses_the_store_keeps_serving_and_says_so(
    run_copy, serve, credentials, tmp_path
):
    with moto_server() as endpoint:
        publish_catalog(run_copy, "s3://gone/catalog.lance", make_bucket(endpoint, "gone"))
        server = serve(_host(run_copy, tmp_path, "host"), "--poll-seconds", "0.2", env=credentials)
    # The store is down now: rankings go on from the version loaded, and /readyz says why no
    # newer one can come.
    deadline = time.monotonic() + 30
    with server.client() as http:
        while "catalog_error" not in (ready := http.get("/readyz").json()):
            assert time.monotonic() < deadline, ready
            time.sleep(0.2)
        assert ready["status"] == "ready" and ready["catalog_version"] == 1
        assert "cannot read the catalog at s3://gone/catalog.lance" in ready["catalog_error"]
        got = http.post("/recommend", json={"history": ["v0002"], "k": 5})
        assert got.status_code == 200 and len(got.json()["items"]) == 5
    proc = run_linkedout(["recommend", run_copy, "--history", "v0002"], env=CREDENTIALS)
    assert_one_line_error(proc, "cannot read the catalog at s3://gone/catalog.lance")


def _flags(options: dict[str, str]) -> list[str]:
    return [part for k, v in options.items() for part in ("-s", f"{k}={v}")]


def test_the_location_file_damaged_is_one_line(run_copy):
    (run_copy / LOCATION_FILE).write_text("{not json")
    proc = run_linkedout(["recommend", run_copy, "--history", "v0002"])
    assert_one_line_error(proc, f"{LOCATION_FILE} is damaged")
