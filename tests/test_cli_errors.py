"""Bad input to `export`, `recommend` and `evaluate` through the real `linkedout` command.

Each case: exit code 2, one `error: ...` line on stderr, no traceback, and nothing stored
changed (the dataset, the run, a folder of the user's files, the objects of a bucket).
"""

from __future__ import annotations

import csv
import json
import time
from io import StringIO

import pytest
from rich.console import Console

from linkedout import render
from linkedout.service.results import Recommendation, Recommendations
from tests.cli_harness import assert_one_line_error, run_linkedout, tree_digest
from tests.recommend.planted import make_planted

GHOST = "ghost-item"  # in the interactions, not in the features
GHOST_USERS = 5  # users whose last interaction is the ghost item


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    data = make_planted(root, items=120, users=100)
    # Under 1% of the logged items lack features: training goes on without them.
    with open(data.interactions, "a", newline="") as f:
        csv.writer(f).writerows([f"u{u}", GHOST, 100] for u in range(GHOST_USERS))
    return data


@pytest.fixture(scope="module")
def trained(planted, tmp_path_factory):
    """One quick run for the whole module, and what `train` printed."""
    run = tmp_path_factory.mktemp("runs") / "run"
    proc = run_linkedout(
        [
            "train",
            "--features",
            planted.features,
            "--interactions",
            planted.interactions,
            "--out",
            run,
            "--epochs",
            "1",
            "--d-model",
            "16",
            "--quiet",
        ]
    )
    assert proc.returncode == 0, proc.stderr
    return run, proc


@pytest.fixture
def user_folder(tmp_path):
    folder = tmp_path / "my-notes"
    folder.mkdir()
    (folder / "README.md").write_text("my own notes\n")
    (folder / "todo.txt").write_text("buy milk\n")
    return folder


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "features.txt"
    path.write_text("not a folder\n")
    return path


def _s3(endpoint):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )


def _bucket_digest(client, bucket: str) -> list[tuple[str, str]]:
    listed = client.list_objects_v2(Bucket=bucket).get("Contents", [])
    return sorted((o["Key"], o["ETag"]) for o in listed)


def _flags(options: dict[str, str], **changes: str | None) -> list[str]:
    options = {**options, **changes}
    return [x for k, v in options.items() if v is not None for x in ("-s", f"{k}={v}")]


# No credentials anywhere: not in the environment, no shared files, no instance metadata.
NO_CREDENTIALS = {
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials",
    "AWS_CONFIG_FILE": "/nonexistent/config",
    "AWS_EC2_METADATA_DISABLED": "true",
}

LOCAL_EXPORT_CASES = [
    # (argv after `export SRC`, fragments of the error line, what must stay untouched)
    (["{folder}"], ["my-notes already holds other files", "README.md", "new or empty"], "folder"),
    (["{file}"], ["features.txt is a file", "new folder path"], "file"),
    (["{file}/sub.lance"], ["features.txt is a file", "sub.lance cannot be created"], "file"),
    (["{src}"], ["already holds a Lance dataset", "new path"], "src"),
]


@pytest.mark.parametrize(
    "argv, fragments, untouched", LOCAL_EXPORT_CASES, ids=["folder", "file", "in-file", "self"]
)
def test_export_refuses_a_destination_that_is_not_new(
    planted, user_folder, a_file, argv, fragments, untouched
):
    paths = {"folder": user_folder, "file": a_file, "src": planted.features}
    watched = [planted.features, paths[untouched]]
    before = [tree_digest(p) for p in watched]
    dest = argv[0].format(folder=user_folder, file=a_file, src=planted.features)
    proc = run_linkedout(["export", planted.features, dest])
    assert_one_line_error(proc, *fragments)
    assert [tree_digest(p) for p in watched] == before
    assert (user_folder / "README.md").read_text() == "my own notes\n"


S3_EXPORT_CASES = [
    # (storage-option changes, extra environment, fragments, at most this many seconds)
    (
        {"aws_access_key_id": None, "aws_secret_access_key": None},
        NO_CREDENTIALS,
        ["cannot export to s3://", "found no credentials", "AWS_ACCESS_KEY_ID"],
        30,
    ),
    (
        {"aws_endpoint": "http://127.0.0.1:9"},
        {},
        ["cannot reach the object store at http://127.0.0.1:9", "aws_endpoint"],
        30,
    ),
    (
        {"aws_endpint": "http://127.0.0.1:9"},
        {},
        ["'aws_endpint' is not a key Lance knows", "did you mean aws_endpoint", "keys are listed"],
        30,
    ),
]


@pytest.mark.parametrize(
    "changes, env, fragments, seconds",
    S3_EXPORT_CASES,
    ids=["no-credentials", "closed-port", "unknown-key"],
)
def test_export_to_s3_that_cannot_work_fails_fast_in_one_line(
    planted, s3_bucket, changes, env, fragments, seconds
):
    bucket, options = s3_bucket
    client = _s3(options["aws_endpoint"])
    before = tree_digest(planted.features), _bucket_digest(client, bucket)
    started = time.monotonic()
    proc = run_linkedout(
        ["export", planted.features, f"s3://{bucket}/f.lance", *_flags(options, **changes)],
        env=env,
    )
    elapsed = time.monotonic() - started
    assert_one_line_error(proc, *fragments)
    assert elapsed < seconds, f"took {elapsed:.0f} s"
    assert (tree_digest(planted.features), _bucket_digest(client, bucket)) == before


def test_export_refuses_a_prefix_that_holds_other_objects(planted, s3_bucket):
    bucket, options = s3_bucket
    client = _s3(options["aws_endpoint"])
    client.put_object(Bucket=bucket, Key="shared/README.md", Body=b"team notes")
    before = _bucket_digest(client, bucket)
    proc = run_linkedout(["export", planted.features, f"s3://{bucket}/shared", *_flags(options)])
    assert_one_line_error(proc, "already holds other objects (README.md)", "new or empty prefix")
    assert _bucket_digest(client, bucket) == before


RECOMMEND_CASES = [
    (["--history", ""], ["--history '': lists no item ids", "ID,ID"]),
    (["--history", ",,,"], ["--history ',,,': lists no item ids"]),
    (["--user", ""], ["--user '': is empty"]),
    (["--user", "[red]x[/red]"], ["user '[red]x[/red]' is not in this run's interactions"]),
    (["--history", "[/bold],[b]x[/b]"], ["none of the 2 history item(s)", "'[/bold]'"]),
    ([], ["exactly one of --user"]),
    (["--user", "u1", "--k", "0"], ["--k 0", "at least 1"]),
]


@pytest.mark.parametrize("argv, fragments", RECOMMEND_CASES)
def test_recommend_bad_input_is_one_line(planted, trained, argv, fragments):
    run, _ = trained
    before = tree_digest(run), tree_digest(planted.features)
    proc = run_linkedout(["recommend", run, *argv])
    assert_one_line_error(proc, *fragments)
    assert (tree_digest(run), tree_digest(planted.features)) == before


def test_evaluate_bad_split_is_one_line(trained):
    run, _ = trained
    before = tree_digest(run)
    proc = run_linkedout(["evaluate", run, "--split", "[b]train[/b]"])
    assert_one_line_error(proc, "--split '[b]train[/b]'", "use valid, test")
    assert tree_digest(run) == before


def test_unknown_history_ids_are_noted_verbatim_not_as_markup(trained):
    run, _ = trained
    proc = run_linkedout(["recommend", run, "--history", "v0001,[/bold],[red]x[/red]", "--k", "3"])
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    [note] = [line for line in proc.stderr.splitlines() if line.strip()]
    assert note.startswith("note: 2 history item(s) unknown") and "'[/bold]'" in note
    assert "top 3 after 3 watched" in proc.stdout


def test_recommendation_table_shows_markup_like_ids_verbatim(monkeypatch):
    out, err = StringIO(), StringIO()
    monkeypatch.setattr(render, "console", Console(file=out, width=200))
    monkeypatch.setattr(render, "err_console", Console(file=err, width=200))
    items = [Recommendation("[bold]a[/bold]", 0.5, 2), Recommendation("[/red]", 0.4, 4)]
    result = Recommendations(items, ["[i]h[/i]"], {2: 0.7, 4: 0.3}, ["[/x]"])
    render.recommendations(result, watched=2, explain=True)
    assert "[bold]a[/bold]" in out.getvalue() and "[/red]" in out.getvalue()
    assert "'[/x]'" in err.getvalue()


def test_train_says_how_many_interactions_it_dropped_and_what_that_did(trained):
    """Issue 16, item 6: a few items without features used to vanish from the split silently."""
    run, proc = trained
    [warning] = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert "1 item(s) without stored features (e.g. ghost-item)" in warning
    assert f"{GHOST_USERS} interaction(s) of {GHOST_USERS} user(s) dropped" in warning
    assert f"the valid/test target of {GHOST_USERS} user(s) moved" in warning
    report = json.loads((run / "config.json").read_text())["split"]
    assert report["items_missing_features"] == 1
    assert report["interactions_dropped"] == report["targets_moved"] == GHOST_USERS
    assert report["example_missing"] == [GHOST]
