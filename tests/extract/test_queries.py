"""Several named queries per video (`--query`, `--queries`, `--query-position`): how they are
read, that the video is computed once and shared when they follow it, that they guide it when
they come first, and that a query added to a stored dataset runs alone and rewrites nothing.

Real clips, tiny Qwen checkpoints loaded by path, real Lance datasets.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import lance
import pytest
import torch
from typer.testing import CliRunner

from linkedout.cli import app
from linkedout.errors import LinkedOutError
from linkedout.extract.queries import Query, parse_query_flags, read_query_file
from linkedout.storage import FeatureStore
from tests.cli_harness import LINKEDOUT, assert_one_line_error, run_linkedout, tree_digest
from tests.extract.test_video_extraction import SMALL_CLIPS
from tests.factories import clips_folder, two_example_clips

CLIPS = Path(__file__).resolve().parents[2] / "examples" / "clips"
FAST = ["--frames", "4", "--max-pixels", str(28 * 28 * 12), "--layers", "all", "--quiet"]
WHAT = "what=What does this video show?"
MOOD = "mood=Describe its style and mood."
WHO = "who=Who would enjoy it?"
VIDEO_SLOTS = 12  # T = 16: 3x2x2 video bins, then 4 prompt slots

runner = CliRunner()


def _extract(videos: Path, model: Path, out: Path, *args: str) -> str:
    argv = ["extract", "--videos", str(videos), "--model", str(model), "--out", str(out)]
    result = runner.invoke(app, [*argv, *FAST, *args])
    assert result.exit_code == 0, result.output + str(result.exception)
    return result.output


def _queries(*values: str) -> list[str]:
    return [arg for value in values for arg in ("--query", value)]


def _tokens(uri: Path, query: str | None = None) -> torch.Tensor:
    store = FeatureStore.open(uri)
    return store.read_tokens(sorted(store.ids()), query=query)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int16)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    return two_example_clips(tmp_path_factory.mktemp("videos"))


@pytest.fixture(scope="module")
def model(checkpoints) -> Path:
    # Every family's shared prefix is checked against one pass per query in test_qwen_vl.py;
    # end to end, one family.
    return checkpoints["qwen2_5_vl"]


@pytest.fixture(scope="module")
def one_query(videos, model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one") / "features.lance"
    _extract(videos, model, out, *_queries(WHAT))
    return out


# ---------------------------------------------------------------- reading queries
def test_query_flags_and_files_read_named_queries(tmp_path):
    assert parse_query_flags(["a=x = y", "b={title}?"]) == [
        Query("a", "x = y"),
        Query("b", "{title}?"),
    ]
    yaml = tmp_path / "q.yaml"
    yaml.write_text("what: What does it show?\nmood: |\n  Its mood,\n  in a word.\n")
    assert read_query_file(yaml) == [
        Query("what", "What does it show?"),
        Query("mood", "Its mood,\nin a word.\n"),
    ]
    listed = tmp_path / "q.yml"
    listed.write_text("- name: what\n  text: What?\n")
    assert read_query_file(listed) == [Query("what", "What?")]
    jsonl = tmp_path / "q.jsonl"
    jsonl.write_text('{"name": "what", "text": "What?"}\n\n{"name": "who", "text": "Who?"}\n')
    assert read_query_file(jsonl) == [Query("what", "What?"), Query("who", "Who?")]


@pytest.mark.parametrize(
    "values, match",
    [
        (["what"], "write NAME=TEXT"),
        (["what=a", "what=b"], "'what' is given twice"),
        (["what=  "], "'what' is empty"),
        (["What=x"], "not a short lower-case identifier"),
    ],
)
def test_bad_query_flags_say_what_is_wrong(values, match):
    with pytest.raises(LinkedOutError, match=match):
        parse_query_flags(values)


@pytest.mark.parametrize(
    "name, text, match",
    [
        ("bad.jsonl", '{"name": "a", "text": "x"}\n{"name": "b", "text": \n', "line 2: not JSON"),
        ("bad.yaml", "what: fine\nmood: [unclosed\n", "line 3: not YAML"),
        ("keys.jsonl", '{"name": "a", "question": "x"}\n', "exactly `name` and `text`"),
        ("empty.yaml", "", "holds no query"),
    ],
)
def test_a_query_file_that_does_not_parse_names_its_line(tmp_path, name, text, match):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(LinkedOutError, match=match):
        read_query_file(path)


# ---------------------------------------------------------------- bad input, end to end
@pytest.mark.parametrize(
    "extra, fragments",
    [
        (_queries(WHAT, "what=again"), ["'what' is given twice"]),
        (_queries("what="), ["query 'what' is empty"]),
        (_queries(WHAT, "who={channel}"), ["names {channel}: pass --titles with a 'channel'"]),
        (
            [*_queries("who=On {channel}?"), "--titles", "{titles}"],
            ["names {channel}, a column", "lacks (it has: views, and the title)"],
        ),
        (["--queries", "{bad}"], ["line 1: not JSON"]),
        (["--prompt", "Describe it.", *_queries(WHAT)], ["--prompt is the one query"]),
        (
            _queries("what=Something else entirely."),
            ["stores query 'what' as", "a name of its own"],
        ),
        ([*_queries(WHAT), "--query-position", "before"], ["placed after the video"]),
        ([*_queries(MOOD), "--shard", "0/2"], ["adds queries (mood)", "drop --shard"]),
    ],
)
def test_bad_queries_are_one_line_and_leave_the_dataset_as_it_was(
    one_query, videos, model, tmp_path, extra, fragments
):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    titles = tmp_path / "titles.csv"
    titles.write_text("item,title,views\nbikes,Bike tricks,12\n")
    files = {"{bad}": str(bad), "{titles}": str(titles)}
    extra = [files.get(a, a) for a in extra]
    before = tree_digest(one_query)
    proc = run_linkedout(
        ["extract", "--videos", videos, "--model", model, "--out", one_query, *FAST, *extra]
    )
    assert_one_line_error(proc, *fragments)
    assert tree_digest(one_query) == before


# ---------------------------------------------------------------- one read of the video
def test_queries_after_the_video_share_its_slots_bit_for_bit(one_query, videos, model, tmp_path):
    three = tmp_path / "three.lance"
    _extract(videos, model, three, *_queries(WHAT, MOOD, WHO))
    single = _tokens(one_query)
    for name in ("what", "mood", "who"):
        asked = _tokens(three, name)
        assert asked.shape == single.shape
        # The video tokens never see a query that follows them: computed once, the same bits.
        assert torch.equal(_bits(asked[:, :, :VIDEO_SLOTS]), _bits(single[:, :, :VIDEO_SLOTS]))
    torch.testing.assert_close(_tokens(three, "what"), single, atol=2e-3, rtol=0)
    # Each query's own slots are its own.
    assert not torch.allclose(
        _tokens(three, "mood")[:, :, VIDEO_SLOTS:], single[:, :, VIDEO_SLOTS:]
    )
    stored = lance.dataset(str(three)).schema
    assert stored.field("query_mood").type.field("layer_1").type.shape == [16 - VIDEO_SLOTS, 64]


def test_batched_videos_share_their_slots_bit_for_bit_too(videos, model, tmp_path):
    # Both videos' prefixes in one padded forward, then all their queries in one.
    one, three = tmp_path / "one.lance", tmp_path / "three.lance"
    _extract(videos, model, one, *_queries(WHAT), "--batch-size", "2")
    _extract(videos, model, three, *_queries(WHAT, MOOD, WHO), "--batch-size", "2")
    single = _tokens(one)[:, :, :VIDEO_SLOTS]
    for name in ("what", "mood", "who"):
        assert torch.equal(_bits(_tokens(three, name)[:, :, :VIDEO_SLOTS]), _bits(single))


def test_queries_before_the_video_guide_its_slots(one_query, videos, model, tmp_path):
    before = tmp_path / "before.lance"
    _extract(videos, model, before, *_queries(WHAT, MOOD), "--query-position", "before")
    what, mood = _tokens(before, "what"), _tokens(before, "mood")
    single = _tokens(one_query)
    # Layer 0 is the embeddings: the video's own features whatever the query. Deeper, the video
    # tokens have read the query before them.
    assert torch.equal(_bits(what[:, 0, :VIDEO_SLOTS]), _bits(mood[:, 0, :VIDEO_SLOTS]))
    assert not torch.allclose(what[:, 1:, :VIDEO_SLOTS], mood[:, 1:, :VIDEO_SLOTS])
    assert not torch.allclose(what[:, 1:, :VIDEO_SLOTS], single[:, 1:, :VIDEO_SLOTS])
    manifest = FeatureStore.open(before).manifest
    assert (manifest.query_position, manifest.query_slots) == ("before", 16)


def test_new_tokens_are_generated_per_query(videos, model, tmp_path):
    extra = ["--new-tokens", "2", "--tokens-per-layer", "18"]
    both = tmp_path / "both.lance"
    _extract(videos, model, both, *_queries(WHAT, MOOD), *extra)
    alone = tmp_path / "alone.lance"
    _extract(videos, model, alone, *_queries(MOOD), *extra)
    # The mood query's generated slots (its last two) are those of a run that asked it alone.
    torch.testing.assert_close(_tokens(both, "mood"), _tokens(alone), atol=2e-3, rtol=0)


# ---------------------------------------------------------------- adding a query in place
def test_an_added_query_runs_alone_and_rewrites_no_stored_column(
    one_query, videos, model, tmp_path
):
    grown = tmp_path / "grown.lance"
    shutil.copytree(one_query, grown)
    stored_files = {
        d.path for f in lance.dataset(str(grown)).get_fragments() for d in f.data_files()
    }
    rows_before = lance.dataset(str(grown)).to_table(columns=["item_id", "extracted_at"])
    output = _extract(videos, model, grown, *_queries(MOOD, WHO))
    assert "0 new, 0 replaced, 2 skipped (already stored), mood, who added to 2 stored" in output
    dataset = lance.dataset(str(grown))
    fragments = dataset.get_fragments()
    # The stored data files are still the ones every old column reads, and the files added
    # hold the new query columns (and their digests) alone: nothing stored was rewritten.
    files = [d for f in fragments for d in f.data_files()]
    assert stored_files <= {d.path for d in files}
    added = {
        child.id()
        for field in dataset.lance_schema.fields()
        if field.name() in ("query_mood", "query_who", "digest_query_mood", "digest_query_who")
        for child in (field, *field.children())
    }
    new_files = [d for d in files if d.path not in stored_files]
    assert new_files and all(set(d.fields) <= added for d in new_files)
    assert dataset.to_table(columns=["item_id", "extracted_at"]).equals(rows_before)
    assert torch.equal(_bits(_tokens(grown)), _bits(_tokens(one_query)))
    # The added queries hold what a run asking all three from the start stores.
    fresh = tmp_path / "fresh.lance"
    _extract(videos, model, fresh, *_queries(WHAT, MOOD, WHO))
    for name in ("mood", "who"):
        torch.testing.assert_close(_tokens(grown, name), _tokens(fresh, name), atol=2e-3, rtol=0)
    manifest = FeatureStore.open(grown).manifest
    assert [n for n, _ in manifest.named_queries()] == ["what", "mood", "who"]


@pytest.mark.parametrize("asked", [[WHAT], []], ids=["the first query", "no query"])
def test_new_videos_get_every_stored_query(one_query, videos, model, tmp_path, asked):
    grown = tmp_path / "grown.lance"
    shutil.copytree(one_query, grown)
    _extract(videos, model, grown, *_queries(MOOD))
    more = tmp_path / "more"
    shutil.copytree(videos, more)
    shutil.copy(CLIPS / "flipping_a_pancake.mkv", more / "pancake.mkv")
    # Asked nothing new (not even the default prompt as a new query), the run extracts the
    # new video with both stored queries.
    output = _extract(more, model, grown, *_queries(*asked))
    assert "1 new" in output and "added to" not in output
    store = FeatureStore.open(grown)
    assert [n for n, _ in store.manifest.named_queries()] == ["what", "mood"]
    assert sorted(store.ids()) == ["avi_clip", "bikes", "pancake"]
    mood = store.read_tokens(["pancake"], query="mood")
    what = store.read_tokens(["pancake"])
    assert torch.equal(_bits(mood[:, :, :VIDEO_SLOTS]), _bits(what[:, :, :VIDEO_SLOTS]))


def test_queries_fill_any_column_of_the_titles_table(videos, model, tmp_path):
    titles = tmp_path / "titles.csv"
    titles.write_text("item,title,channel\nbikes,Bike tricks,Pets\navi_clip,A clip,\n")
    asked = tmp_path / "asked.lance"
    ask = "what=Channel: {channel}\nWhat is {title}?"
    _extract(videos, model, asked, "--titles", str(titles), *_queries(ask))
    # bikes reads its channel; avi_clip has none, so the line naming it is dropped.
    spelled = tmp_path / "spelled.lance"
    _extract(videos, model, spelled, *_queries("what=Channel: Pets\nWhat is Bike tricks?"))
    short = tmp_path / "short.lance"
    _extract(videos, model, short, *_queries("what=What is A clip?"))
    got = FeatureStore.open(asked)
    assert torch.equal(
        _bits(got.read_tokens(["bikes"])), _bits(FeatureStore.open(spelled).read_tokens(["bikes"]))
    )
    assert torch.equal(
        _bits(got.read_tokens(["avi_clip"])),
        _bits(FeatureStore.open(short).read_tokens(["avi_clip"])),
    )


def test_reading_a_query_the_dataset_lacks_names_those_it_holds(one_query):
    store = FeatureStore.open(one_query)
    with pytest.raises(LinkedOutError, match="holds no query 'mood'; its queries: what"):
        store.read_tokens(store.ids(), query="mood")


def test_info_lists_the_queries(one_query, videos, model, tmp_path):
    two = tmp_path / "two.lance"
    _extract(videos, model, two, *_queries(WHAT, MOOD))
    result = runner.invoke(app, ["info", str(two)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "query what" in result.output and "Describe its style and mood." in result.output
    assert "(2 of 2 items)" in result.output
    assert "after the video" in result.output


def test_an_interrupted_query_addition_commits_nothing_and_resumes(
    checkpoints, tmp_path_factory, tmp_path
):
    videos = clips_folder(tmp_path_factory.mktemp("slow_videos"), SMALL_CLIPS)
    model = checkpoints["qwen2_5_vl"]
    out = tmp_path / "features.lance"
    _extract(videos, model, out, *_queries(WHAT))
    stored = _tokens(out)
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    argv = ["extract", "--videos", videos, "--model", model, "--out", out, *FAST]
    argv += [*_queries(MOOD), "--commit-every", "1"]
    first = subprocess.Popen(
        [LINKEDOUT, *map(str, argv)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
    )
    deadline = time.monotonic() + 120
    while _checkpointed(tmp_path / "cache") < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGINT)  # Ctrl-C, half-way through the new column
    output, _ = first.communicate(timeout=60)
    assert first.returncode != 0, "the run ended before it was interrupted: " + output
    assert "Traceback" not in output
    store = FeatureStore.open(out)
    assert store.missing_queries() == ["mood"]  # named, but no column committed
    assert torch.equal(_bits(store.read_tokens(sorted(store.ids()))), _bits(stored))
    with pytest.raises(LinkedOutError, match="query 'mood' .* was never finished"):
        store.read_tokens(store.ids(), query="mood")
    proc = run_linkedout(argv, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"mood added to {len(SMALL_CLIPS)} stored" in proc.stdout
    fresh = tmp_path / "fresh.lance"
    _extract(videos, model, fresh, *_queries(WHAT, MOOD))
    torch.testing.assert_close(_tokens(out, "mood"), _tokens(fresh, "mood"), atol=2e-3, rtol=0)
    assert not list((tmp_path / "cache").rglob("*.sqlite"))  # the checkpoint is gone


def _checkpointed(cache: Path) -> int:
    """Batches a query addition has finished and checkpointed (Lance's UDF checkpoint)."""
    for path in cache.rglob("*.sqlite"):
        try:
            with sqlite3.connect(path) as db:
                return db.execute("SELECT count(*) FROM batches").fetchone()[0]
        except sqlite3.Error:
            return 0
    return 0
