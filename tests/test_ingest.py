import io
import socket
import urllib.request
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
    assert ml100k.item_titles[1] == "Toy Story (1995)"  # with its year, as GroupLens writes it
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
    monkeypatch.setattr(urllib.request, "urlopen",
                        lambda url, timeout: urls.append(url) or _FakeResponse(payload.getvalue()))
    with pytest.raises(IngestError, match="checksum mismatch"):
        ingest.load("ml-1m")
    assert urls == ["https://files.grouplens.org/datasets/movielens/ml-1m.zip"]
    assert list(ingest.cache_dir().iterdir()) == []


def test_a_verified_download_is_cached_and_reused(monkeypatch):
    _served_ml_latest_small(monkeypatch)
    assert len(ingest.load("ml-latest-small")) == 1
    assert [p.name for p in ingest.cache_dir().iterdir()] == ["ml-latest-small.zip"]
    monkeypatch.setattr(urllib.request, "urlopen", None)  # a second load must not download
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


# --- ids are kept exactly (one type per column; no two ids merge, no id splits) ---------------


def _ids_file(tmp_path, kind, users, items, stem="ids"):
    frame = pd.DataFrame({"user_id": users, "item_id": items, "rating": 3.0})
    path = tmp_path / f"{stem}.{kind}"
    frame.to_parquet(path) if kind == "parquet" else frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_ids_beyond_int64_mixed_with_negatives_stay_distinct_and_exact(tmp_path, kind):
    huge = [str(2**64 - 1 - k) for k in range(5)]  # all one float64: they used to wrap onto each other
    users = huge + [str(-k) for k in range(1, 13)]
    r = ingest.read_file(_ids_file(tmp_path, kind, users, [str(i) for i in range(17)]))
    assert r.n_users == 17
    assert sorted(r.frame["user_id"]) == sorted(users)
    assert r.frame["item_id"].dtype == np.int64  # the other column keeps its own type


def test_unsigned_ids_beyond_int64_stay_exact(tmp_path):
    path = tmp_path / "u.parquet"
    pd.DataFrame({"user_id": np.array([2**64 - 1, 2**63, 1], dtype=np.uint64), "item_id": [1, 2, 3],
                  "rating": 3.0}).to_parquet(path)
    users = ingest.read_file(path).frame["user_id"]
    assert sorted(users) == sorted(["18446744073709551615", "9223372036854775808", "1"])


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_integral_decimals_are_the_integer(tmp_path, kind):
    """`1.0` (as float columns are exported) and `1` are one user, and the column stays integer."""
    r = ingest.read_file(_ids_file(tmp_path, kind, ["1", "1.0", "2", "-3.00"], ["10", "20", "10", "10"]))
    assert r.frame["user_id"].dtype == np.int64
    assert sorted(set(r.frame["user_id"])) == [-3, 1, 2] and r.n_users == 3
    plain = ingest.read_file(_ids_file(tmp_path, kind, [1, 1, 2, -3], [10, 20, 10, 10], stem="plain"), name="ids")
    assert plain.fingerprint == r.fingerprint


def test_a_text_id_column_keeps_each_id_once(tmp_path):
    r = ingest.read_file(_ids_file(tmp_path, "csv", ["1", "1.0", "u7", "007", "7", "1.5"], [1, 2, 3, 4, 5, 6]))
    assert r.n_users == 5
    assert sorted(set(r.frame["user_id"])) == sorted(["1", "u7", "007", "7", "1.5"])


def test_int64_bounds_stay_integers(tmp_path):
    users = [str(2**63 - 1), str(-(2**63))]
    r = ingest.read_file(_ids_file(tmp_path, "csv", users, ["1", "2"]))
    assert r.frame["user_id"].dtype == np.int64 and sorted(r.frame["user_id"]) == [-(2**63), 2**63 - 1]


# --- a declared rating scale --------------------------------------------------------------------


def _ml1m_zip(tmp_path, body):
    path = tmp_path / "ml-1m.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("ml-1m/ratings.dat", body)
    return path


def test_movielens_takes_its_own_scale_unless_one_is_declared(tmp_path):
    path = _ml1m_zip(tmp_path, "1::10::5::1\n2::10::3::2\n2::20::55::3\n")
    with pytest.raises(IngestError, match=r"ratings.dat: line 3, column 'rating': 55 is outside .* 1 <= rating <= 5"):
        ingest.load("ml-1m", path=path)
    assert ingest.load("ml-1m", path=path, rating_scale=(0, 100)).rating_scale == (0.0, 100.0)


def test_a_declared_scale_rejects_a_rating_outside_it_and_inference_stays_the_default(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("user,item,rating\n1,2,4\n1,3,55\n")
    with pytest.raises(IngestError, match=r"r.csv: line 3, column 'rating': 55 is outside the rating scale"):
        ingest.load(str(path), rating_scale=(1, 5))
    assert ingest.load(str(path)).rating_scale == (4.0, 55.0)
    with pytest.raises(IngestError, match=r"rating_scale \(5, 1\): expected finite numbers with low <= high"):
        ingest.load(str(path), rating_scale=(5, 1))


# --- errors name the true line; the reader's options ---------------------------------------------


@pytest.mark.parametrize("content,line", [
    ("user,item,rating\n1,2,4\n\n\n1,3,x\n", 5),
    ("\nuser,item,rating\n\n1,2,4\r\n\r\n1,3,x\n", 6),
    ("user,item,rating\n1,2,4\n1,3,x\n", 3),
])
def test_a_bad_value_after_blank_lines_names_its_true_line(tmp_path, content, line):
    path = tmp_path / "blank.csv"
    path.write_bytes(content.encode())
    with pytest.raises(IngestError, match=f"blank.csv: line {line}, column 'rating': 'x'"):
        ingest.read_file(path)


def test_headerless_file_with_blank_lines_names_its_true_line(tmp_path):
    path = tmp_path / "u.data"
    path.write_text("1\t2\t4\t0\n\n2\t2\t5\t0\n\n\n3\t1\t\t0\n")
    with pytest.raises(IngestError, match="u.data: line 6, column 'rating'"):
        ingest.read_file(path)


def test_separator_header_and_columns_options(tmp_path):
    path = tmp_path / "r.txt"
    path.write_text("10;1;4\n20;1;5\n10;2;3\n")
    r = ingest.load(str(path), sep=";", header=False, columns={"item_id": "", "user_id": "", "rating": ""})
    assert sorted(r.frame["user_id"]) == [1, 1, 2] and sorted(set(r.frame["item_id"])) == [10, 20]
    default = tmp_path / "plain.csv"
    default.write_text("1,10,4\n2,10,3\n")
    assert ingest.read_file(default, header=False).n_users == 2  # user, item, rating by position
    dat = tmp_path / "r2.txt"
    dat.write_text("a::x::4\nb::x::2\n")
    assert ingest.read_file(dat, sep="::", header=False).n_users == 2
    named = tmp_path / "named.csv"
    named.write_text("who;what;stars\nann;x;4\n")
    mapped = ingest.read_file(named, sep=";", columns={"user_id": "who", "item_id": "what"})
    assert list(mapped.frame["user_id"]) == ["ann"]


@pytest.mark.parametrize("call,message", [
    (lambda p: ingest.read_file(p, header=False, columns=["user_id", "item_id"]), "missing ['rating']"),
    (lambda p: ingest.read_file(p, columns={"user": "who"}), "unknown name(s) ['user']"),
    (lambda p: ingest.read_file(p, sep=""), "sep ''"),
    (lambda p: ingest.load("ml-1m", columns={"user_id": "u"}), "ml-1m: reader option(s) columns are for ratings files"),
    (lambda p: ingest.load("synthetic", sep=";"), "reader option(s) sep are for ratings files"),
])
def test_bad_reader_options_get_one_clear_error(tmp_path, call, message):
    path = tmp_path / "r.csv"
    path.write_text("1,10,4\n")
    with pytest.raises(IngestError) as error:
        call(path)
    assert message in str(error.value)


def test_parquet_refuses_text_options(tmp_path):
    path = tmp_path / "r.parquet"
    _frame().to_parquet(path)
    with pytest.raises(IngestError, match="r.parquet: sep and header apply to text files"):
        ingest.read_file(path, header=False)


def test_the_missing_column_error_names_the_flags_that_exist(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("who,what,stars\n1,2,3\n")
    with pytest.raises(IngestError, match="--columns user_id=NAME") as error:
        ingest.read_file(path)
    from pipeline.train import parser
    flags = {s for a in parser()._actions for s in a.option_strings}
    assert {"--columns", "--sep", "--no-header", "--rating-scale"} <= flags
    assert "--no-header" in str(error.value)


# --- downloads: the URL as it is, no partial file left behind -----------------------------------


def test_the_checksum_error_names_the_url_exactly(monkeypatch):
    payload = io.BytesIO()
    with zipfile.ZipFile(payload, "w") as z:
        z.writestr("ml-1m/ratings.dat", "1::10::5::1\n")
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: _FakeResponse(payload.getvalue()))
    with pytest.raises(IngestError) as error:
        ingest.load("ml-1m")
    assert str(error.value).startswith("https://files.grouplens.org/datasets/movielens/ml-1m.zip: checksum mismatch")


_STALLED_DOWNLOAD = """
import io, sys, time, urllib.request
from pipeline import ingest

class Stalled(io.BytesIO):
    def __enter__(self): return self
    def __exit__(self, *exc): pass
    def read(self, n=-1):
        if self.tell() == 0:
            return super().read(1000)
        time.sleep(600)

urllib.request.urlopen = lambda url, timeout: Stalled(b"x" * 5000)
ingest.load("ml-latest-small")
"""


def _served_ml_latest_small(monkeypatch):
    import hashlib

    payload = io.BytesIO()
    with zipfile.ZipFile(payload, "w") as z:
        z.writestr("ml-latest-small/ratings.csv", "userId,movieId,rating,timestamp\n1,2,3.5,4\n")
    md5 = hashlib.md5(payload.getvalue()).hexdigest()
    served = {"ml-latest-small.zip": payload.getvalue(), "ml-latest-small.zip.md5": f"{md5}  x\n".encode()}
    monkeypatch.setattr(urllib.request, "urlopen",
                        lambda url, timeout: _FakeResponse(served[url.rsplit("/", 1)[1]]))


def test_a_sigkilled_download_leaves_a_partial_file_that_the_next_load_removes(monkeypatch):
    import os
    import signal
    import subprocess
    import sys
    import time

    cache = ingest.cache_dir()
    env = {**os.environ, "PIPELINE_CACHE": str(cache)}
    child = subprocess.Popen([sys.executable, "-c", _STALLED_DOWNLOAD], env=env)
    try:
        deadline = time.monotonic() + 60
        while not list(cache.glob(".*.part")) and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.05)
        partial = list(cache.glob(".*.part"))
        assert [p.name for p in partial] == [f".ml-latest-small.{socket.gethostname()}.{child.pid}.part"]
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert partial[0].exists()  # SIGKILL: no finally ran
    _served_ml_latest_small(monkeypatch)
    assert len(ingest.load("ml-latest-small")) == 1
    assert [p.name for p in cache.iterdir()] == ["ml-latest-small.zip"]


def test_only_abandoned_partial_files_are_removed(monkeypatch):
    import os
    import subprocess
    import sys

    cache = ingest.cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    names = {
        f".ml-1m.{host}.{int(dead.stdout)}.part": False,  # its writer is gone
        f".ml-1m.{host}.{os.getppid()}.part": True,  # a live writer here
        ".ml-20m.elsewhere.example.7.part": True,  # another machine's, recent
        ".ml-25m.elsewhere.example.8.part": False,  # another machine's, untouched for two hours
        ".ml-1m.abcd1234.part": False,  # an old-style name, untouched for two hours
        ".notours.1.part": True,
    }
    for name in names:
        (cache / name).write_bytes(b"x")
    for name in (".ml-25m.elsewhere.example.8.part", ".ml-1m.abcd1234.part"):
        os.utime(cache / name, (0, os.path.getmtime(cache / name) - 7200))
    _served_ml_latest_small(monkeypatch)
    ingest.load("ml-latest-small")
    kept = [name for name, keep in names.items() if keep]
    assert sorted(p.name for p in cache.iterdir()) == sorted([*kept, "ml-latest-small.zip"])


def test_the_package_keeps_its_public_names():
    """pipeline/ingest/ is split by job; callers still take everything from `pipeline.ingest`."""
    assert sorted(ingest.__all__) == ["IngestError", "MOVIELENS", "Ratings", "add_source_flags", "cache_dir", "load",
                                      "movielens", "read_file", "source_options", "synthetic"]
    assert all(callable(getattr(ingest, name)) for name in ingest.__all__ if name != "MOVIELENS")
    assert callable(ingest.movielens) and "ml-100k" in ingest.MOVIELENS
