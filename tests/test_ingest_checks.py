"""Ingest, reliability round three: which column is read (--columns wins, nothing ambiguous is
guessed), dropped duplicates reported, and ids and timestamps of the types they must be."""

import datetime

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import ingest
from pipeline.ingest import IngestError
from pipeline.ratings import TIME_RANGE


def _csv(tmp_path, text, name="r.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _parquet(tmp_path, columns: dict, name="r.parquet"):
    path = tmp_path / name
    pq.write_table(pa.table(columns), path)
    return path


def _named_parquet(tmp_path, arrays: list, names: list[str]):
    """pyarrow directly: it writes a repeated column name as it is (pandas would not)."""
    path = tmp_path / "r.parquet"
    pq.write_table(pa.table(arrays, names=names), path)
    return path


# --- which column is read ------------------------------------------------------------------------


@pytest.mark.parametrize("columns", [{"rating": "stars"}, "rating=stars"])
def test_an_explicit_column_wins_and_the_recognised_one_is_not_read(tmp_path, columns):
    path = _csv(tmp_path, "user,item,rating,stars\n1,10,1,5\n2,10,2,4\n")
    r = ingest.load(str(path), columns=columns)
    assert r.frame.set_index("user_id")["rating"].to_dict() == {1: 5.0, 2: 4.0}
    assert list(r.frame.columns) == ["user_id", "item_id", "rating", "timestamp"]


def test_two_recognised_columns_for_one_field_are_refused_not_guessed(tmp_path):
    path = _csv(tmp_path, "user,item,rating,stars\n1,10,1,5\n")
    with pytest.raises(IngestError) as error:
        ingest.read_file(path)
    assert str(error.value) == ("{}: columns 'rating' and 'stars' are both rating: choose one with "
                                "--columns rating=NAME (columns={{...}} in Python)".format(path))


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_a_mapping_to_a_column_the_file_lacks_is_an_error_even_when_the_default_exists(tmp_path, kind):
    if kind == "csv":
        path = _csv(tmp_path, "user,item,rating\n1,10,4\n")
    else:
        path = _parquet(tmp_path, {"user": [1], "item": [10], "rating": [4.0]})
    with pytest.raises(IngestError) as error:
        ingest.read_file(path, columns={"rating": "stars"})
    message = str(error.value)
    assert message.startswith(f"{path}: --columns rating=stars: the file has no column 'stars'")
    assert "['user', 'item', 'rating']" in message and "\n" not in message


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_a_repeated_header_name_that_would_be_read_is_refused(tmp_path, kind):
    if kind == "csv":
        path = _csv(tmp_path, "user,item,rating,rating\n1,10,4,2\n")
    else:
        path = _named_parquet(tmp_path, [[1], [10], [4.0], [2.0]], ["user", "item", "rating", "rating"])
    with pytest.raises(IngestError) as error:
        ingest.read_file(path)
    assert str(error.value) == f"{path}: column 'rating' appears 2 times in the header: expected each column named once"
    with pytest.raises(IngestError, match="column 'rating' appears 2 times"):
        ingest.read_file(path, columns={"rating": "rating"})


def test_a_repeated_name_that_is_not_read_is_no_obstacle(tmp_path):
    csv = _csv(tmp_path, "user,note,item,note,rating\n1,a,10,b,4\n")
    pqt = _named_parquet(tmp_path, [[1], ["a"], [10], ["b"], [4.0]], ["user", "note", "item", "note", "rating"])
    assert ingest.read_file(csv).fingerprint == ingest.read_file(pqt).fingerprint


def test_one_column_for_two_fields_is_refused(tmp_path):
    path = _csv(tmp_path, "who,what,stars\n1,10,4\n")
    with pytest.raises(IngestError, match=r"r.csv: --columns user_id=who,item_id=who: one column for two fields"):
        ingest.read_file(path, columns={"user_id": "who", "item_id": "who"})


def test_explicit_names_may_swap_recognised_ones(tmp_path):
    path = _csv(tmp_path, "user,item,rating\n1,10,4\n2,10,3\n")
    r = ingest.read_file(path, columns={"user_id": "item", "item_id": "user"})
    assert sorted(r.frame["item_id"]) == [1, 2] and set(r.frame["user_id"]) == {10}


def test_rows_with_more_fields_than_the_header_are_refused_not_shifted(tmp_path):
    path = _csv(tmp_path, "user,item,rating\n1,10,4,9\n2,10,3,9\n")
    with pytest.raises(IngestError, match=r"r.csv: line 2: 4 fields under a header of 3"):
        ingest.read_file(path)


@pytest.mark.parametrize("users", [[1, 2, 3], [3, 1, 1]])  # a range index is stored as metadata only
def test_a_parquet_column_pandas_wrote_as_the_index_is_found(tmp_path, users):
    path = tmp_path / "r.parquet"
    frame = pd.DataFrame({"user_id": users, "item_id": [10, 20, 30], "rating": [4.0, 3.0, 5.0]})
    frame.set_index("user_id").to_parquet(path)
    r = ingest.read_file(path)
    assert r.fingerprint == ingest.read_file(_csv(tmp_path, frame.to_csv(index=False))).fingerprint


# --- dropped duplicates are reported; the fingerprint does not move -----------------------------


def test_dropped_duplicates_are_counted_and_said(tmp_path):
    path = _csv(tmp_path, "user,item,rating,timestamp\n1,10,4,5\n1,10,2,9\n1,10,3,7\n2,10,5,1\n")
    r = ingest.read_file(path, name="dups")
    assert r.duplicates_dropped == 2 and len(r) == 2
    assert r.describe() == ("dups: 2 ratings, 2 users, 1 items; 2 duplicate (user, item) pair(s) dropped, "
                            "the latest rating kept")
    clean = ingest.read_file(_csv(tmp_path, "user,item,rating,timestamp\n1,10,2,9\n2,10,5,1\n", "c.csv"), name="c")
    assert clean.duplicates_dropped == 0 and "duplicate" not in clean.describe()
    assert clean.fingerprint == r.fingerprint  # the count is reported, not fingerprinted


def test_the_fingerprint_of_unchanged_data_is_unchanged(tmp_path):
    """Pinned: the value main computed for this table before round three."""
    path = _csv(tmp_path, "user_id,item_id,rating,timestamp\n1,10,4.0,100\n1,20,3.5,200\n2,10,5.0,300\n3,30,1.0,400\n")
    assert ingest.read_file(path).fingerprint == "1b6de68496375588559d78499a70a37598739b6407f0903ba4e49839ec839ed2"


# --- ids: integers or text -----------------------------------------------------------------------


@pytest.mark.parametrize("ids,shown", [
    (pa.array([False, True]), "False is a bool"),
    (pa.array([None, True], pa.bool_()), "row 1, column 'user_id': True is a bool"),
    (pa.array([[1], [2]]), "is a list"),
    (pa.array([b"a", b"b"]), "b'a' is a bytes"),
    (pa.array([datetime.date(2020, 1, 1)] * 2), "datetime.date(2020, 1, 1) is a date"),
    (pa.array([1.0, float("inf")]), "row 1, column 'user_id': inf is not finite"),
])
def test_parquet_ids_that_are_no_integer_or_text_are_refused(tmp_path, ids, shown):
    path = _parquet(tmp_path, {"user_id": ids, "item_id": [1, 2], "rating": [4.0, 3.0]})
    with pytest.raises(IngestError) as error:
        ingest.read_file(path)
    message = str(error.value)
    assert message.startswith(f"{path}: row ") and shown in message
    assert message.endswith("expected an integer or text id") and "\n" not in message


def test_text_and_categorical_parquet_ids_are_still_ids(tmp_path):
    path = tmp_path / "r.parquet"
    pd.DataFrame({"user_id": pd.Series(["a", "b"], dtype="category"), "item_id": ["7", "8"],
                  "rating": [4.0, 3.0]}).to_parquet(path)
    r = ingest.read_file(path)
    assert list(r.frame["user_id"]) == ["a", "b"] and list(r.frame["item_id"]) == [7, 8]


# --- timestamps: seconds since the epoch, a representable time ----------------------------------


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
def test_parquet_datetimes_are_stored_as_seconds_like_the_numbers(tmp_path, unit):
    when = pd.to_datetime(["1999-12-31 23:59:59.900", "2020-01-01 00:00:00.000", "1960-06-01 00:00:00.500"])
    when = when.as_unit(unit)
    frame = pd.DataFrame({"user_id": [1, 2, 3], "item_id": [10, 10, 10], "rating": [4.0, 3.0, 5.0]})
    frame.assign(timestamp=when).to_parquet(tmp_path / "r.parquet")
    r = ingest.read_file(tmp_path / "r.parquet", name="t")
    seconds = [946684799, 1577836800, -302486400]  # floored, before the epoch too, as the numbers are
    assert list(r.frame["timestamp"]) == seconds
    numbers = ingest.read_file(_csv(tmp_path, "user,item,rating,timestamp\n" + "".join(
        f"{u},10,{x},{t}\n" for u, x, t in zip([1, 2, 3], [4, 3, 5], seconds))), name="t")
    assert numbers.fingerprint == r.fingerprint


def test_zoned_datetimes_are_utc(tmp_path):
    when = pd.to_datetime(["2020-01-01 01:00"]).tz_localize("Europe/Paris")
    path = tmp_path / "z.parquet"
    pd.DataFrame({"user_id": [1], "item_id": [1], "rating": [4.0], "timestamp": when}).to_parquet(path)
    assert list(ingest.read_file(path).frame["timestamp"]) == [1577836800]


@pytest.mark.parametrize("kind", ["csv", "parquet"])
@pytest.mark.parametrize("value,shown", [
    (1e30, {"csv": "1e30", "parquet": "1e+30"}),
    (-1e30, {"csv": "-1e30", "parquet": "-1e+30"}),
    (TIME_RANGE[1] + 2, {"csv": str(TIME_RANGE[1] + 2), "parquet": str(TIME_RANGE[1] + 2)}),  # float64-exact
    (TIME_RANGE[0] - 2, {"csv": str(TIME_RANGE[0] - 2), "parquet": str(TIME_RANGE[0] - 2)}),
    (1e300, {"csv": "1e+300", "parquet": "1e+300"}),
])
def test_a_timestamp_that_is_no_time_is_refused_alike_in_csv_and_parquet(tmp_path, kind, value, shown):
    """Such a value was stored as INT64_MIN; now one error: file, line or row, column, value, the bound."""
    if kind == "csv":
        path = _csv(tmp_path, f"user,item,rating,timestamp\n1,10,4,100\n2,10,3,{shown['csv']}\n")
        where = "line 3"
    else:
        path = _parquet(tmp_path, {"user": [1, 2], "item": [10, 10], "rating": [4.0, 3.0],
                                   "timestamp": [100, value]})
        where = "row 1"
    with pytest.raises(IngestError) as error:
        ingest.read_file(path)
    assert str(error.value) == (f"{path}: {where}, column 'timestamp': {shown[kind]} is out of range: expected a "
                                "time since the epoch within ±2^53 (seconds, or a finer unit)")
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # nothing left behind


def test_the_time_range_ends_and_milliseconds_are_accepted(tmp_path):
    low, high = TIME_RANGE
    r = ingest.read_file(_csv(tmp_path, f"user,item,rating,timestamp\n1,10,4,{low}\n2,10,3,{high}\n"
                                        "3,10,3,1600000000000\n"))
    assert sorted(r.frame["timestamp"]) == [low, 1_600_000_000_000, high]  # ms order the split as well


@pytest.mark.parametrize("column,shown", [
    (pa.array([True, False]),
     "row 0, column 'timestamp': True is a bool: expected seconds since the epoch or a datetime"),
    (pa.array([pd.Timestamp("2020-01-01"), None]),
     "row 1, column 'timestamp': missing value: expected a date and time"),
])
def test_parquet_timestamps_of_the_wrong_kind_are_refused(tmp_path, column, shown):
    path = _parquet(tmp_path, {"user_id": [1, 2], "item_id": [10, 10], "rating": [4.0, 3.0], "timestamp": column})
    with pytest.raises(IngestError) as error:
        ingest.read_file(path)
    assert str(error.value).startswith(f"{path}: {shown}")


def test_csv_timestamps_that_are_no_numbers_name_their_line(tmp_path):
    path = _csv(tmp_path, "user,item,rating,timestamp\n1,10,4,100\n2,10,3,inf\n")
    with pytest.raises(IngestError) as error:
        ingest.read_file(path)
    expected = "line 3, column 'timestamp': 'inf' is not a number: expected seconds since the epoch"
    assert str(error.value) == f"{path}: {expected}"
