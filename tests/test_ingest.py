import io
import zipfile

import numpy as np
import pandas as pd
import pytest

from pipeline import ingest
from pipeline.ingest import IngestError


def _frame():
    return pd.DataFrame({"user_id": [1, 1, 2, 3], "item_id": [10, 20, 10, 30],
                         "rating": [4.0, 3.5, 5.0, 1.0], "timestamp": [100, 200, 300, 400]})


@pytest.mark.real_data
def test_ml100k_offline_from_the_recbole_wheel(ml100k):
    assert len(ml100k) == 100_000
    assert ml100k.n_users == 943 and ml100k.n_items == 1682
    assert ml100k.frame["rating"].mean() == pytest.approx(3.52986, abs=1e-5)
    assert ml100k.rating_scale == (1.0, 5.0)
    assert ml100k.item_titles[1].startswith("Toy Story")
    assert ml100k.duplicates_dropped == 0


@pytest.mark.real_data
def test_ml100k_from_a_grouplens_zip_has_the_same_fingerprint(ml100k, tmp_path):
    """The same data through another source and parser gives the same fingerprint."""
    f = ml100k.frame
    body = "\n".join(f"{u}\t{i}\t{int(r)}\t{t}" for u, i, r, t in f.sample(frac=1, random_state=0).itertuples(index=False))
    titles = "1|Toy Story (1995)|01-Jan-1995||http://x|0\n"
    path = tmp_path / "ml-100k.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("ml-100k/u.data", body + "\n")
        z.writestr("ml-100k/u.item", titles)
    again = ingest.load("ml-100k", path=path)
    assert again.fingerprint == ml100k.fingerprint
    assert again.item_titles[1] == "Toy Story (1995)"


def test_the_cache_is_used_before_anything_else(tmp_path):
    path = ingest.cache_dir() / "ml-1m.zip"
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("ml-1m/ratings.dat", "1::10::5::978300760\n2::10::3::978300761\n")
    assert len(ingest.load("ml-1m", download=False)) == 2


@pytest.mark.parametrize("name,member,body,titles", [
    ("ml-1m", "ml-1m/ratings.dat", "1::10::5::978300760\n1::20::3::978302109\n2::10::4::978301968\n",
     ("ml-1m/movies.dat", "10::GoldenEye (1995)::Action\n")),
    ("ml-10m", "ml-10M100K/ratings.dat", "1::10::5::838985046\n1::20::3.5::838983525\n2::10::4.5::838983392\n",
     ("ml-10M100K/movies.dat", "10::GoldenEye (1995)::Action\n")),
    *[(name, f"{name}/ratings.csv", "userId,movieId,rating,timestamp\n1,10,5.0,1\n1,20,3.5,2\n2,10,0.5,3\n",
       (f"{name}/movies.csv", 'movieId,title,genres\n10,"GoldenEye, the (1995)",Action\n'))
      for name in ("ml-20m", "ml-25m", "ml-32m", "ml-latest-small")],
])
def test_each_grouplens_parser(tmp_path, name, member, body, titles):
    path = tmp_path / f"{name}.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(member, body)
        z.writestr(*titles)
    r = ingest.load(name, path=path)
    assert len(r) == 3 and r.n_users == 2 and r.n_items == 2
    assert r.frame["user_id"].dtype == np.int64
    assert r.item_titles[10].startswith("GoldenEye")
    assert r.rating_scale == ingest.MOVIELENS[name].scale


@pytest.mark.parametrize("suffix", ["csv", "tsv", "parquet", "inter", "u.data", "dat"])
def test_every_local_format_gives_one_fingerprint(tmp_path, suffix):
    f = _frame()
    path = tmp_path / ("u.data" if suffix == "u.data" else f"ratings.{suffix}")
    if suffix == "csv":
        f.rename(columns={"user_id": "userId", "item_id": "movieId"}).to_csv(path, index=False)
    elif suffix == "tsv":
        f.to_csv(path, sep="\t", index=False)
    elif suffix == "parquet":
        f.to_parquet(path)
    elif suffix == "inter":
        f.set_axis(["user_id:token", "item_id:token", "rating:float", "timestamp:float"], axis=1).to_csv(
            path, sep="\t", index=False)
    elif suffix == "u.data":
        f.to_csv(path, sep="\t", index=False, header=False)
    else:
        path.write_text("".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in f.itertuples(index=False)))
    r = ingest.read_file(path, rating_scale=(0.5, 5.0))
    assert len(r) == 4
    reference = ingest.read_file(_write(tmp_path / "ref.csv", f), rating_scale=(0.5, 5.0))
    assert r.fingerprint == reference.fingerprint


def _write(path, frame, **kw):
    frame.to_csv(path, index=False, **kw)
    return path


def test_string_ids_and_a_column_mapping(tmp_path):
    f = pd.DataFrame({"who": ["ann", "bob"], "what": ["x1", "x2"], "stars": [4, 2]})
    r = ingest.read_file(_write(tmp_path / "r.csv", f), columns={"user_id": "who", "item_id": "what"})
    assert list(r.frame["user_id"]) == ["ann", "bob"]
    assert (r.frame["timestamp"] == 0).all()
    assert r.rating_scale == (2.0, 4.0)


def test_duplicates_keep_the_latest_and_are_counted(tmp_path):
    f = pd.concat([_frame(), pd.DataFrame({"user_id": [1], "item_id": [10], "rating": [1.5], "timestamp": [900]})])
    r = ingest.read_file(_write(tmp_path / "d.csv", f))
    assert r.duplicates_dropped == 1 and len(r) == 4
    assert r.frame.set_index(["user_id", "item_id"]).loc[(1, 10), "rating"] == 1.5


@pytest.mark.parametrize("content,message", [
    ("user,rating\n1,4\n", "missing column 'item_id'"),
    ("user,item,rating\n1,2,4\n1,3,good\n", "line 3, column 'rating': 'good' is not a finite number"),
    ("user,item,rating\n1,2,\n", "line 2, column 'rating'"),
    ("user,item,rating\n1,2,4\n1,3,9\n", "line 3, column 'rating': 9 is outside the rating scale: expected 1 <= rating <= 5"),
    ("", "empty file"),
    ("user,item,rating\n", "empty file"),
    ("user,item,rating,timestamp\n1,2,4,yesterday\n", "column 'timestamp'"),
])
def test_bad_files_get_one_clear_error(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(IngestError, match="bad.csv") as error:
        ingest.read_file(path, rating_scale=(1, 5))
    assert message in str(error.value)


def test_unreadable_and_unknown_inputs(tmp_path):
    with pytest.raises(IngestError, match="missing.csv: cannot read"):
        ingest.load(str(tmp_path / "missing.csv"))
    with pytest.raises(IngestError, match="unknown ratings format '.xlsx'"):
        ingest.read_file(tmp_path / "r.xlsx")
    with pytest.raises(IngestError, match="unknown dataset 'ml-7k'"):
        ingest.load("ml-7k")


def test_a_truncated_zip_is_refused(tmp_path):
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as z:
        z.writestr("ml-1m/ratings.dat", "1::10::5::1\n" * 1000)
    bad = tmp_path / "ml-1m.zip"
    bad.write_bytes(good.read_bytes()[:-200])
    with pytest.raises(IngestError, match="ml-1m.zip: truncated or corrupt zip"):
        ingest.load("ml-1m", path=bad)


class _FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_a_download_with_the_wrong_checksum_leaves_nothing_in_the_cache(monkeypatch):
    payload = io.BytesIO()
    with zipfile.ZipFile(payload, "w") as z:
        z.writestr("ml-1m/ratings.dat", "1::10::5::1\n")
    urls = []
    monkeypatch.setattr(ingest.urllib.request, "urlopen",
                        lambda url, timeout: urls.append(url) or _FakeResponse(payload.getvalue()))
    with pytest.raises(IngestError, match="checksum mismatch"):
        ingest.load("ml-1m")
    assert urls == ["https://files.grouplens.org/datasets/movielens/ml-1m.zip"]
    assert list(ingest.cache_dir().iterdir()) == []


def test_a_verified_download_is_cached_and_reused(monkeypatch):
    payload = io.BytesIO()
    with zipfile.ZipFile(payload, "w") as z:
        z.writestr("ml-latest-small/ratings.csv", "userId,movieId,rating,timestamp\n1,2,3.5,4\n")
    import hashlib
    md5 = hashlib.md5(payload.getvalue()).hexdigest()
    served = {"ml-latest-small.zip": payload.getvalue(), "ml-latest-small.zip.md5": f"{md5}  ml-latest-small.zip\n".encode()}
    monkeypatch.setattr(ingest.urllib.request, "urlopen",
                        lambda url, timeout: _FakeResponse(served[url.rsplit("/", 1)[1]]))
    assert len(ingest.load("ml-latest-small")) == 1
    assert [p.name for p in ingest.cache_dir().iterdir()] == ["ml-latest-small.zip"]
    monkeypatch.setattr(ingest.urllib.request, "urlopen", None)  # a second load must not download
    assert len(ingest.load("ml-latest-small")) == 1


def test_synthetic_is_seeded_and_has_the_requested_shape():
    a = ingest.synthetic(200, 100, 5000, seed=3)
    b = ingest.synthetic(200, 100, 5000, seed=3)
    c = ingest.synthetic(200, 100, 5000, seed=4)
    assert len(a) == 5000 and a.duplicates_dropped == 0
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert a.frame["user_id"].max() < 200 and a.frame["item_id"].max() < 100
    assert a.frame["rating"].between(1, 5).all()
    with pytest.raises(IngestError, match="n_ratings"):
        ingest.synthetic(10, 10, 101)


def test_synthetic_options_inline_for_the_command_line():
    r = ingest.load("synthetic:n_users=50,n_items=40,n_ratings=300,seed=2")
    assert len(r) == 300 and r.frame["user_id"].max() < 50
    with pytest.raises(IngestError, match="unknown option 'users'"):
        ingest.load("synthetic:users=5")
    with pytest.raises(IngestError, match="n_items='many'"):
        ingest.load("synthetic:n_items=many")
