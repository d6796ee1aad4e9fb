from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from linkedout.errors import LinkedOutError
from linkedout.recommend.interactions import (
    ITEM_COLUMNS,
    USER_COLUMNS,
    InteractionLog,
    read_interactions,
)
from tests.conftest import shared_data


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


def as_dict(log: InteractionLog) -> dict[str, list[str]]:
    return dict(zip(log.users, log.sequences))


def test_csv_groups_by_user_in_first_appearance_and_file_order(tmp_path):
    path = write(tmp_path, "log.csv", "user_id,item_id\nb,1\na,2\nb,3\na,1\nc,9\n")
    log = read_interactions(path)
    assert log.users == ["b", "a", "c"]
    assert log.sequences == [["1", "3"], ["2", "1"], ["9"]]
    assert len(log) == 3
    assert log.num_interactions == 5
    assert log.source == str(path)


def test_tsv_table(tmp_path):
    path = write(tmp_path, "log.tsv", "uid\tiid\textra\nu1\ti1\tx\nu1\ti2\ty\n")
    assert as_dict(read_interactions(path)) == {"u1": ["i1", "i2"]}


def test_ids_stay_strings(tmp_path):
    path = write(tmp_path, "log.csv", "user,item\n007,0001\n7,1\n007,1.0\n")
    assert as_dict(read_interactions(path)) == {"007": ["0001", "1.0"], "7": ["1"]}


def test_quoted_csv_fields(tmp_path):
    path = write(tmp_path, "log.csv", 'user,item\n"a,b","x ""y"""\n')
    assert as_dict(read_interactions(path)) == {"a,b": ['x "y"']}


@pytest.mark.parametrize("user", [*USER_COLUMNS, "USER_ID", "UserId"])
def test_user_column_names_are_detected_case_insensitively(tmp_path, user):
    path = write(tmp_path, "log.csv", f"{user},item\nu,i\n")
    assert as_dict(read_interactions(path)) == {"u": ["i"]}


@pytest.mark.parametrize("item", [*ITEM_COLUMNS, "Video_ID", "ITEM"])
def test_item_column_names_are_detected_case_insensitively(tmp_path, item):
    path = write(tmp_path, "log.csv", f"user,{item}\nu,i\n")
    assert as_dict(read_interactions(path)) == {"u": ["i"]}


def test_columns_given_by_name(tmp_path):
    path = write(tmp_path, "log.csv", "customer,product,when\nc,p2,2\nc,p1,1\n")
    log = read_interactions(path, user_col="customer", item_col="product", time_col="when")
    assert as_dict(log) == {"c": ["p1", "p2"]}
    # A given name matches regardless of case when only one column fits.
    assert as_dict(read_interactions(path, user_col="CUSTOMER", item_col="Product")) == {
        "c": ["p2", "p1"]
    }


@pytest.mark.parametrize("time", ["timestamp", "ts", "time", "datetime", "TimeStamp"])
def test_numeric_timestamps_sort_each_user(tmp_path, time):
    path = write(tmp_path, "log.csv", f"user,item,{time}\na,x,30\nb,y,5\na,z,10\na,w,20\n")
    assert as_dict(read_interactions(path)) == {"a": ["z", "w", "x"], "b": ["y"]}


def test_timestamp_ties_keep_file_order(tmp_path):
    path = write(tmp_path, "log.csv", "user,item,ts\na,late,2\na,first,1\na,second,1\na,third,1\n")
    assert read_interactions(path).sequences == [["first", "second", "third", "late"]]


def test_float_and_nanosecond_timestamps(tmp_path):
    floats = write(tmp_path, "f.csv", "user,item,ts\na,x,1.5\na,y,1.25\n")
    assert read_interactions(floats).sequences == [["y", "x"]]
    # Epoch nanoseconds one apart: exact as integers, equal as float64.
    ns = write(
        tmp_path, "ns.csv", "user,item,ts\na,x,1700000000000000001\na,y,1700000000000000000\n"
    )
    assert read_interactions(ns).sequences == [["y", "x"]]


def test_iso_timestamps(tmp_path):
    path = write(
        tmp_path,
        "log.csv",
        "user,item,datetime\na,x,2021-03-01T10:00:00\na,y,2021-01-15 08:30:00\na,z,2021-01-15\n",
    )
    assert read_interactions(path).sequences == [["z", "y", "x"]]
    zoned = write(
        tmp_path,
        "zoned.csv",
        # 10:00+02:00 is 08:00 UTC, so it comes before 09:00Z.
        "user,item,time\na,x,2021-01-01T09:00:00Z\na,y,2021-01-01T10:00:00+02:00\n",
    )
    assert read_interactions(zoned).sequences == [["y", "x"]]


def test_parquet_with_integer_ids_and_timestamp_type(tmp_path):
    path = tmp_path / "log.parquet"
    when = [datetime(2020, 1, d, tzinfo=timezone.utc) for d in (3, 1, 2)]
    table = pa.table({"User_ID": [5, 5, 6], "video_id": [10, 11, 12], "timestamp": when})
    pq.write_table(table, path)
    assert as_dict(read_interactions(path)) == {"5": ["11", "10"], "6": ["12"]}


def test_parquet_detected_by_content_and_string_ids(tmp_path):
    path = tmp_path / "log.bin"
    pq.write_table(pa.table({"user": ["007", "007"], "item": ["01", "02"], "ts": ["2", "1"]}), path)
    assert as_dict(read_interactions(path)) == {"007": ["02", "01"]}


def test_microlens_pairs_format(tmp_path):
    path = write(tmp_path, "pairs.tsv", "1\t1958 6346 0015\n2\t16657\n\n1\t7\n3\t  \n")
    log = read_interactions(path)
    # User 1's second line continues the sequence; user 3 lists no items and is left out.
    assert as_dict(log) == {"1": ["1958", "6346", "0015", "7"], "2": ["16657"]}
    assert log.num_interactions == 5


def test_pairs_format_in_a_txt_file(tmp_path):
    path = write(tmp_path, "pairs.txt", "u1\ta b c\nu2\td e\n")
    assert as_dict(read_interactions(path)) == {"u1": ["a", "b", "c"], "u2": ["d", "e"]}


def test_two_column_tsv_with_a_header_is_a_table(tmp_path):
    # Item ids with spaces would look like pairs were it not for the header row.
    path = write(tmp_path, "log.tsv", "user\titem\nu1\tthe cat\nu1\ta dog\n")
    assert as_dict(read_interactions(path)) == {"u1": ["the cat", "a dog"]}


def test_pairs_format_refuses_column_flags(tmp_path):
    path = write(tmp_path, "pairs.tsv", "1\t2 3\n")
    with pytest.raises(LinkedOutError, match="pairs format.*drop --time-col"):
        read_interactions(path, time_col="ts")


def test_pairs_line_without_a_tab(tmp_path):
    # Past the sniffed head, so detection has already chosen the pairs format.
    lines = "".join(f"u{i}\ta b\n" for i in range(20_000)) + "broken line\n"
    path = write(tmp_path, "pairs.tsv", lines)
    with pytest.raises(LinkedOutError, match=r"pairs.tsv:20001: expected 'user<TAB>item"):
        read_interactions(path)


def test_missing_file(tmp_path):
    with pytest.raises(LinkedOutError, match="nope.csv does not exist"):
        read_interactions(tmp_path / "nope.csv")


def test_empty_file(tmp_path):
    with pytest.raises(LinkedOutError, match="is empty"):
        read_interactions(write(tmp_path, "log.csv", ""))


def test_header_without_rows(tmp_path):
    with pytest.raises(LinkedOutError, match="no interactions"):
        read_interactions(write(tmp_path, "log.csv", "user,item\n"))


def test_no_user_column_lists_columns_and_flag(tmp_path):
    path = write(tmp_path, "log.csv", "person,item,rating\np,i,5\n")
    with pytest.raises(LinkedOutError) as e:
        read_interactions(path)
    message = str(e.value)
    assert "no user column among 'person', 'item', 'rating'" in message
    assert "--user-col" in message
    assert "\n" not in message


def test_no_item_column_lists_columns_and_flag(tmp_path):
    path = write(tmp_path, "log.csv", "user,movie\nu,m\n")
    with pytest.raises(LinkedOutError, match="no item column among 'user', 'movie'.*--item-col"):
        read_interactions(path)


def test_ambiguous_columns_name_both(tmp_path):
    path = write(tmp_path, "log.csv", "user,user_id,item\na,1,x\n")
    with pytest.raises(LinkedOutError, match="both 'user' and 'user_id'.*--user-col"):
        read_interactions(path)
    # Naming one settles it.
    assert as_dict(read_interactions(path, user_col="user_id")) == {"1": ["x"]}
    both_times = write(tmp_path, "t.csv", "user,item,ts,time\na,x,1,2\n")
    with pytest.raises(LinkedOutError, match="both 'ts' and 'time'.*--time-col"):
        read_interactions(both_times)


def test_given_column_that_does_not_exist(tmp_path):
    path = write(tmp_path, "log.csv", "user,item\nu,i\n")
    with pytest.raises(LinkedOutError, match="--item-col 'video' is not a column.*'user', 'item'"):
        read_interactions(path, item_col="video")


def test_given_column_on_parquet_that_does_not_exist(tmp_path):
    path = tmp_path / "log.parquet"
    pq.write_table(pa.table({"user": ["u"], "item": ["i"]}), path)
    with pytest.raises(LinkedOutError, match="--time-col 'ts' is not a column"):
        read_interactions(path, time_col="ts")


def test_same_column_for_user_and_item(tmp_path):
    path = write(tmp_path, "log.csv", "user,item\nu,i\n")
    with pytest.raises(LinkedOutError, match="both the user and the item"):
        read_interactions(path, item_col="user")


def test_unparseable_timestamps(tmp_path):
    path = write(tmp_path, "log.csv", "user,item,ts\na,x,1\na,y,yesterday\n")
    with pytest.raises(
        LinkedOutError, match="time column 'ts' is neither numbers nor ISO.*--time-col"
    ):
        read_interactions(path)


@pytest.mark.parametrize("bad", ["NaN", "nan", "inf", "-inf"])
def test_non_finite_timestamps_are_refused_not_sorted_last(tmp_path, bad):
    """NaN would order those rows after every other (making them targets) without a word."""
    path = write(tmp_path, "log.csv", f"user,item,ts\na,x,1.5\na,y,{bad}\nb,z,2\nb,w,{bad}\n")
    with pytest.raises(
        LinkedOutError, match=r"time column 'ts' is NaN or infinite on 2 row\(s\).*data row 2"
    ):
        read_interactions(path)
    table = pa.table({"user": ["a", "a"], "item": ["x", "y"], "ts": [1.0, float(bad)]})
    pq.write_table(table, tmp_path / "log.parquet")
    with pytest.raises(LinkedOutError, match="NaN or infinite on 1 row"):
        read_interactions(tmp_path / "log.parquet")


def test_empty_ids(tmp_path):
    path = write(tmp_path, "log.csv", "user,item\na,x\n,y\nb,\n")
    with pytest.raises(LinkedOutError, match="column 'user' is empty on 1 row.*data row 2"):
        read_interactions(path)


def test_ragged_csv_is_a_user_error(tmp_path):
    path = write(tmp_path, "log.csv", "user,item\na,x\nb,y,z\n")
    with pytest.raises(LinkedOutError, match="cannot read as a table"):
        read_interactions(path)


def test_corrupt_parquet_is_a_user_error(tmp_path):
    path = write(tmp_path, "log.parquet", "not parquet at all")
    with pytest.raises(LinkedOutError, match="cannot read as Parquet"):
        read_interactions(path)


def test_real_microlens_pairs():
    path = shared_data("microlens-50k", "MicroLens-50k_pairs.tsv")
    log = read_interactions(path)
    lengths = [len(s) for s in log.sequences]
    assert len(log) == 50_000
    assert log.num_interactions == 359_708
    assert (min(lengths), max(lengths)) == (5, 218)
    assert log.users[:2] == ["1", "2"]
    assert log.sequences[0] == ["1958", "6346", "15223", "17700", "1707"]
    assert len({i for s in log.sequences for i in s}) == 19_220
