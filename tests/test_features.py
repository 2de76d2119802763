"""Side features: parsing a user's files, bucketing, the CSR blocks over a split, encoding a new
entity, every bad-input error, and ml-100k's own features from both carriers."""

import argparse
import dataclasses
import zipfile

import numpy as np
import pytest

from pipeline import ingest
from pipeline.features import Rule, SideFeatures, quantile_edges
from pipeline.ingest.source import read_features
from pipeline.ratings import IngestError
from pipeline.split import split

RATINGS = "user_id,item_id,rating\n" + "".join(
    f"{u},{i},{(u + i) % 5 + 1}\n" for u in (1, 2, 3, 4) for i in (10, 20, 30))
USERS = "user_id,age,tags,city\n1,20,a|b,X\n2,35,b,Y\n3,50,a|b|c,X\n9,61,c,Z\n"  # 4 has none; 9 no ratings


def _write(folder, name, text):
    path = folder / name
    path.write_text(text)
    return path


@pytest.fixture
def files(tmp_path):
    return {"ratings": _write(tmp_path, "r.csv", RATINGS), "users": _write(tmp_path, "users.csv", USERS)}


def _dense(block):
    out = np.zeros(block.shape, dtype=np.float32)
    for row in range(block.shape[0]):
        lo, hi = block.crow[row], block.crow[row + 1]
        out[row, block.col[lo:hi]] = block.values[lo:hi]
    return out


def test_each_column_kind_is_read_from_a_file(files):
    r = ingest.load(files["ratings"], user_features=files["users"])
    f = r.user_features
    assert f.ids.tolist() == [1, 2, 3, 9] and f.ids.dtype == np.int64
    kinds = {g.name: (g.kind, g.vocabulary) for g in f.groups}
    assert kinds == {"age": ("numeric", ("<35", "[35,50)", "[50,61)", ">=61")),  # 4 distinct values: one bucket each
                     "tags": ("multi", ("a", "b", "c")), "city": ("categorical", ("X", "Y", "Z"))}
    assert f.sizes == {"age": 4, "tags": 3, "city": 3}
    assert r.item_features is None


def test_tsv_with_an_alias_key_and_text_ids(tmp_path):
    ratings = _write(tmp_path, "r.tsv", "user_id\titem_id\trating\nann\t10\t4\nbob\t20\t3\n7\t10\t5\n")
    users = _write(tmp_path, "u.tsv", "group\tuid\nx\tann\ny\t7\n")  # key found by name, not position
    items = _write(tmp_path, "i.txt", "movieId\tgenre\n10\tDrama|Comedy\n")
    table = read_features(items, "item")  # read and checked alone, before any ratings
    assert (table.key, table.keys.tolist(), table.columns) == ("movieId", [10], {"genre": ["Drama|Comedy"]})
    r = ingest.load(ratings, user_features=users, item_features=items)
    assert r.user_features.ids.tolist() == ["7", "ann"]  # integer key 7 matched as the text id "7"
    s = split(r, test=0.0, valid=0.0)
    (block,) = s.feature_blocks("user")
    assert s.user_ids.tolist() == ["7", "ann", "bob"]
    assert _dense(block).tolist() == [[0, 1], [1, 0], [0, 0], [0, 0]]  # bob: none; the fallback row
    assert r.item_features.groups[0].vocabulary == ("Comedy", "Drama")


def test_quantile_buckets_are_deterministic_and_never_empty():
    values = np.random.default_rng(0).lognormal(size=1000)
    edges = quantile_edges(values)
    assert len(edges) == 9 and edges == quantile_edges(values[::-1].copy())
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=10)
    assert (counts > 0).all() and abs(counts - 100).max() <= 1
    assert quantile_edges([5.0, 5.0]) == ()
    assert quantile_edges([3.0, 1.0, 2.0, 1.0]) == (2.0, 3.0)  # few distinct values: one bucket each
    assert quantile_edges([0.0] * 90 + list(range(1, 12))) == (1.0, 2.0)  # zero-inflated: zeros kept apart


def test_fixed_edges_bucket_and_clamp():
    f = SideFeatures.build([1, 2, 3], {"age": ["7", "18", "80"]}, {"age": Rule("numeric", (18.0, 25.0))})
    assert f.groups[0].vocabulary == ("<18", "[18,25)", ">=25")
    assert f.groups[0].codes.tolist() == [0, 1, 2]
    assert f.encode_row({"age": "-5"})["age"].tolist() == [0]  # out of range -> the edge bucket
    assert f.encode_row({"age": 1e9})["age"].tolist() == [2]


def test_blocks_over_a_split(files):
    r = ingest.load(files["ratings"], user_features=files["users"])
    s = split(r, test=0.0, valid=0.0)
    assert s.user_ids.tolist() == [1, 2, 3, 4]
    blocks = {b.name: b for b in s.feature_blocks("user")}
    assert list(blocks) == ["age", "tags", "city"]
    tags = blocks["tags"]
    assert tags.shape == (5, 3) and tags.crow.dtype == tags.col.dtype == np.int64 and tags.values.dtype == np.float32
    w2, w3 = 1 / np.sqrt(2), 1 / np.sqrt(3)
    np.testing.assert_allclose(_dense(tags), [[w2, w2, 0], [0, 1, 0], [w3, w3, w3], [0, 0, 0], [0, 0, 0]], rtol=1e-6)
    assert _dense(blocks["city"]).tolist() == [[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0], [0, 0, 0]]  # Z (id 9) unused
    dense = blocks["age"].tensor().to_dense()
    assert dense.shape == (5, 4) and dense.sum(1).tolist() == [1, 1, 1, 0, 0]
    assert s.feature_blocks("item") == []
    with pytest.raises(ValueError, match="side 'users'"):
        s.feature_blocks("users")


def test_blocks_refuse_ids_of_another_kind():
    f = SideFeatures.build([1, 2], {"g": ["a", "b"]})
    with pytest.raises(ValueError, match="keyed by integer ids, the table's ids are text"):
        f.blocks(np.array(["1", "2"], dtype=object))


def test_encode_row_for_a_new_entity(files):
    f = ingest.load(files["ratings"], user_features=files["users"]).user_features
    row = f.encode_row({"age": "40", "tags": "c|a|nope", "city": "Nowhere"})
    assert {k: v.tolist() for k, v in row.items()} == {"age": [1], "tags": [0, 2], "city": []}
    assert all(v.dtype == np.int64 for v in row.values())
    assert f.encode_row({})["age"].tolist() == []
    with pytest.raises(ValueError, match=r"feature 'town'='X': no such group: expected one of age, tags, city"):
        f.encode_row({"town": "X"})
    with pytest.raises(ValueError, match=r"feature 'age'='forty': not a number: expected a finite number"):
        f.encode_row({"age": "forty"})


def test_features_are_immutable_and_digested(files):
    f = ingest.load(files["ratings"], user_features=files["users"]).user_features
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.ids = None
    with pytest.raises(ValueError):
        f.groups[0].codes[0] = 1
    shuffled = _write(files["users"].parent, "u2.csv", "user_id,age,tags,city\n" + "".join(
        reversed(USERS.splitlines(keepends=True)[1:])))
    again = ingest.load(files["ratings"], user_features=shuffled).user_features
    assert again.digest == f.digest and len(f.digest) == 64
    changed = _write(files["users"].parent, "u3.csv", USERS.replace("1,20,a|b,X", "1,20,a|b,Y"))
    assert ingest.load(files["ratings"], user_features=changed).user_features.digest != f.digest


def test_features_leave_the_fingerprints_alone(files):
    plain = ingest.load(files["ratings"])
    featured = ingest.load(files["ratings"], user_features=files["users"])
    assert featured.fingerprint == plain.fingerprint and featured.user_features is not None
    assert split(featured, seed=3).fingerprint == split(plain, seed=3).fingerprint


@pytest.mark.parametrize("name,text,message", [
    ("u.json", "user_id,a\n1,x\n", r"u.json: unknown user features format '.json': expected .csv, .tsv or .txt"),
    ("u.csv", "", r"u.csv: empty file: expected a header"),
    ("u.csv", "user_id,a\n", r"u.csv: no rows"),
    ("u.csv", "user_id\n1\n", r"u.csv: no feature column"),
    ("u.csv", "user_id,a,a\n1,x,y\n", r"u.csv: line 1: column 'a' appears twice"),
    ("u.csv", "item_id,a\n1,x\n", r"u.csv: line 1, column 'item_id': the item key in user features: expected a "
                                  r"user_id column"),
    ("u.csv", "uid,user_id,a\n1,1,x\n", r"u.csv: line 1: columns 'uid' and 'user_id' are both user_id"),
    ("u.csv", "user_id,a,b\n1,x,y\n2,,y\n", r"u.csv: line 3, column 'a': missing value: expected a value, or drop "
                                            r"the column"),
    ("u.csv", "user_id,a,b\n1,x,y\n\n2,x\n", r"u.csv: line 4, column 'b': missing value"),
    ("u.csv", "user_id,a\n1,x\n,y\n", r"u.csv: line 3, column 'user_id': empty id: expected an id"),
    ("u.csv", "user_id,a\n1,x\n2,y\n1.0,z\n", r"u.csv: line 4, column 'user_id': '1' again \(first on line 2\): "
                                              r"expected one row per user"),
    ("u.csv", "user_id,a\n1,x\nann,y\n", r"u.csv: line 3, column 'user_id': 'ann' is not an integer: the ratings' "
                                         r"user ids are integers: expected an integer id"),
    ("u.csv", "user_id,a\n1,x\n2,y,z\n", r"u.csv: cannot parse \(.*line 3"),
])
def test_every_bad_feature_file_is_refused_and_nothing_is_written(files, name, text, message):
    folder = files["ratings"].parent
    path = _write(folder, name, text)
    before = sorted(p.name for p in folder.iterdir())
    with pytest.raises(IngestError, match=message):
        ingest.load(files["ratings"], user_features=path)
    assert sorted(p.name for p in folder.iterdir()) == before
    assert not ingest.cache_dir().exists() or not any(ingest.cache_dir().iterdir())


def test_a_missing_feature_file_is_refused_before_any_download(tmp_path):
    with pytest.raises(IngestError, match="nope.csv: cannot read"):
        ingest.load("ml-1m", item_features=tmp_path / "nope.csv")
    assert not ingest.cache_dir().exists() or not any(ingest.cache_dir().iterdir())


def test_the_flags_reach_load():
    parser = argparse.ArgumentParser()
    ingest.add_source_flags(parser)
    args = parser.parse_args(["--user-features", "users.csv", "--item-features", "items.tsv"])
    assert ingest.source_options(args) == {"user_features": "users.csv", "item_features": "items.tsv"}
    assert ingest.source_options(parser.parse_args([])) == {}


def _u_item(item: int, date: str, genres: set[str]) -> str:
    from pipeline.ingest.grouplens import GENRES

    return "|".join([str(item), f"Film {item}", date, "", "http://x"] + ["1" if g in genres else "0" for g in GENRES])


def test_ml100k_features_from_a_grouplens_zip(tmp_path):
    path = tmp_path / "ml-100k.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("ml-100k/u.data", "1\t10\t4\t1\n2\t20\t3\t2\n")
        z.writestr("ml-100k/u.user", "1|24|M|technician|85711\n2|53|F|other|T8H1N\n")
        z.writestr("ml-100k/u.item", _u_item(10, "01-Jan-1995", {"Action", "Drama"}) + "\n"
                   + _u_item(20, "", {"unknown"}) + "\n")
    r = ingest.load("ml-100k", path=path)
    assert r.user_features.sizes == {"age": 7, "gender": 2, "occupation": 2, "zip": 2}
    assert r.user_features.groups[3].vocabulary == ("8", "T")  # the first character: digit or province
    assert r.item_features.sizes == {"release_year": 1, "genre": 3}
    assert r.item_features.encode_row({"genre": "Drama|Action"})["genre"].tolist() == [0, 1]
    year = r.item_features.groups[0]
    assert year.offsets.tolist() == [0, 1, 1]  # item 20 has no date: no release_year value


def test_a_trimmed_grouplens_zip_has_no_features(tmp_path):
    path = tmp_path / "ml-100k.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("ml-100k/u.data", "1\t10\t4\t1\n")
        z.writestr("ml-100k/u.item", "10|Film|01-Jan-1995||http://x|0\n")
    r = ingest.load("ml-100k", path=path)
    assert r.user_features is None and r.item_features is None and r.item_titles[10] == "Film"


@pytest.mark.real_data
def test_ml100k_features_from_the_recbole_wheel(ml100k):
    users, items = ml100k.user_features, ml100k.item_features
    assert len(users.ids) == 943 and len(items.ids) == 1682
    assert users.sizes == {"age": 7, "gender": 2, "occupation": 21, "zip": 19}
    assert items.sizes == {"release_year": 8, "genre": 19}
    assert users.groups[0].vocabulary == ("<18", "[18,25)", "[25,35)", "[35,45)", "[45,50)", "[50,56)", ">=56")
    row = users.encode_row({"age": "25", "gender": "F", "occupation": "writer", "zip": "9"})
    assert {k: v.tolist() for k, v in row.items()} == {"age": [2], "gender": [0], "occupation": [20], "zip": [9]}
    s = split(ml100k, seed=0)
    genre = {b.name: b for b in s.feature_blocks("item")}["genre"]
    assert genre.shape == (s.n_items + 1, 19) and genre.crow[-1] == genre.crow[-2]  # the fallback row: empty
    np.testing.assert_allclose(np.add.reduceat(genre.values ** 2, genre.crow[:-2]), 1.0, rtol=1e-5)
    assert ml100k.fingerprint == ingest.load("ml-100k").fingerprint


def test_the_search_takes_the_feature_flags():
    from pipeline.search import SearchOptions

    options = SearchOptions.parse(["--user-features", "users.csv", "--item-features", "items.csv"])
    assert (options.user_features, options.item_features) == ("users.csv", "items.csv")
