"""iid, grouped/time-incremental and feature-sorting scenarios; the per-sample group they use."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ricordo.data import ArrayDataset, load_data, make_scenario
from ricordo.errors import ConfigError, DataError


def _ids(n: int, offset: int = 0) -> ArrayDataset:
    """x[:, 0] is a unique sample id (and the feature sorted on), 5 classes."""
    x = torch.stack([torch.arange(n) + offset, torch.arange(n) % 7], 1).float()
    return ArrayDataset(x, torch.arange(n) % 5)


# ----------------------------------------------------------------------------------------- iid


def test_iid_chunks_are_disjoint_and_cover_the_data() -> None:
    train, test = _ids(53), _ids(21, offset=1000)
    sc = make_scenario("iid", train, test, 4, 3)
    assert [len(c) for c in sc.train] == [14, 13, 13, 13]
    assert [len(c) for c in sc.test] == [6, 5, 5, 5]
    for chunks, source in ((sc.train, train), (sc.test, test)):
        ids = torch.cat([c.x[:, 0] for c in chunks])
        assert torch.equal(torch.sort(ids).values, source.x[:, 0])  # disjoint and complete
        for c in chunks:
            assert torch.equal(c.y, c.x[:, 0].long() % 5)  # rows kept whole
            assert torch.all(c.x[1:, 0] > c.x[:-1, 0])  # source order inside a chunk
    assert torch.equal(torch.sort(sc.test_all().x[:, 0]).values, test.x[:, 0])
    assert sc.chunk_classes == [c.classes() for c in sc.train]  # the classes present
    # random, not contiguous: chunk 0 is not the first quarter
    assert not torch.equal(sc.train[0].x[:, 0], train.x[:14, 0])
    other = make_scenario("iid", train, test, 4, 4)
    assert not torch.equal(other.train[0].x, sc.train[0].x)


def test_iid_full_test_set_option() -> None:
    train, test = _ids(20), _ids(8, offset=100)
    sc = make_scenario("iid", train, test, 3, 0, options={"split_test": False})
    assert all(torch.equal(t.x, test.x) for t in sc.test)
    assert sum(len(c) for c in sc.train) == 20


# ---------------------------------------------------------------------------- feature sorting


def test_feature_sorting_is_monotone_across_chunks() -> None:
    g = torch.Generator().manual_seed(0)
    train = ArrayDataset(torch.rand(50, 3, generator=g), torch.arange(50) % 4)
    test = ArrayDataset(torch.rand(20, 3, generator=g), torch.arange(20) % 4)
    sc = make_scenario("feature-sorting", train, test, 4, 0, options={"feature": 1})
    assert [len(c) for c in sc.train] == [13, 13, 12, 12] and [len(c) for c in sc.test] == [5] * 4
    for chunks in (sc.train, sc.test):
        values = torch.cat([c.x[:, 1] for c in chunks])
        assert torch.all(values[1:] >= values[:-1])  # sorted within and across chunks
    assert torch.equal(
        torch.sort(torch.cat([c.x[:, 1] for c in sc.train])).values,
        torch.sort(train.x[:, 1]).values,
    )
    ranges = sc.info["score_ranges"]
    assert all(ranges[k][1] <= ranges[k + 1][0] for k in range(3))
    assert sc.info["options"] == {"feature": 1, "statistic": "mean", "randomness": 0.0}


def test_feature_sorting_images_by_brightness_or_channel() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(30, 3, 2, 2, generator=g)
    data = ArrayDataset(x, torch.arange(30) % 3)
    sc = make_scenario("feature-sorting", data, data, 3, 0)  # feature=None: mean brightness
    means = [c.x.mean((1, 2, 3)) for c in sc.train]
    assert all(means[k].max() <= means[k + 1].min() for k in range(2))
    red = make_scenario("feature-sorting", data, data, 3, 0, options={"feature": 0})
    reds = [c.x[:, 0].mean((1, 2)) for c in red.train]
    assert all(reds[k].max() <= reds[k + 1].min() for k in range(2))


def test_feature_sorting_randomness_mixes() -> None:
    train = _ids(200)
    sc = make_scenario(
        "feature-sorting", train, train, 4, 0, options={"feature": 0, "randomness": 1.0}
    )
    first = sc.train[0].x[:, 0]
    assert first.max() > 100  # late samples swapped into the first chunk
    assert sum(len(c) for c in sc.train) == 200
    ids = torch.cat([c.x[:, 0] for c in sc.train])
    assert torch.equal(torch.sort(ids).values, train.x[:, 0])  # still a partition


def test_feature_sorting_by_hue() -> None:
    # three colour families: red-ish, green-ish and blue-ish images, shuffled
    base = torch.eye(3).repeat(10, 1)[
        torch.randperm(30, generator=torch.Generator().manual_seed(0))
    ]
    x = (0.2 + 0.6 * base).reshape(30, 3, 1, 1).expand(30, 3, 2, 2).contiguous()
    data = ArrayDataset(x, torch.arange(30) % 2)
    sc = make_scenario("feature-sorting", data, data, 3, 0, options={"statistic": "hue"})
    dominant = [set(c.x[:, :, 0, 0].argmax(1).tolist()) for c in sc.train]
    assert dominant == [{0}, {1}, {2}]  # red (hue 0), green (1/3), blue (2/3)
    grey = ArrayDataset(torch.rand(6, 1, 2, 2), torch.arange(6))
    with pytest.raises(DataError, match="statistic 'hue' needs RGB images"):
        make_scenario("feature-sorting", grey, grey, 2, 0, options={"statistic": "hue"})
    with pytest.raises(ConfigError, match="feature applies to statistic='mean' only"):
        make_scenario(
            "feature-sorting", data, data, 2, 0, options={"statistic": "hue", "feature": 0}
        )


# ------------------------------------------------------------------------------------ grouped


def _years(n: int, years: list[int], offset: int = 0) -> ArrayDataset:
    d = _ids(n, offset)
    return ArrayDataset(d.x, d.y, torch.tensor(years * (n // len(years) + 1))[:n])


@pytest.mark.parametrize("name", ["grouped", "time-incremental"])
def test_grouped_one_group_per_chunk(name: str) -> None:
    years = [2021, 2019, 2020, 2022]
    train, test = _years(40, years), _years(12, years, offset=500)
    sc = make_scenario(name, train, test, 4, 0)
    assert sc.info["chunk_groups"] == [[2019], [2020], [2021], [2022]]
    for k, year in enumerate([2019, 2020, 2021, 2022]):
        for chunk, source in ((sc.train[k], train), (sc.test[k], test)):
            assert chunk.group is not None and set(chunk.group.tolist()) == {year}
            assert torch.equal(chunk.x, source.x[source.group == year])
    assert sum(len(c) for c in sc.train) == 40 and sum(len(c) for c in sc.test) == 12
    assert sc.chunk_classes[0] == sorted(set(sc.train[0].y.tolist()))


def test_grouped_merges_contiguous_bins_and_explicit_groupings() -> None:
    train = _years(50, [2015, 2016, 2017, 2018, 2019])
    sc = make_scenario("time-incremental", train, train, 2, 0)
    assert sc.info["chunk_groups"] == [[2015, 2016, 2017], [2018, 2019]]
    assert set(sc.train[1].group.tolist()) == {2018, 2019}
    chosen = make_scenario(
        "grouped", train, train, 2, 0, options={"groupings": [[2019], [2015, 2017]]}
    )
    assert [set(c.group.tolist()) for c in chosen.train] == [{2019}, {2015, 2017}]
    assert sum(len(c) for c in chosen.train) == 30  # 2016 and 2018 left out on purpose


def test_grouped_refusals() -> None:
    plain = _ids(10)
    with pytest.raises(
        DataError, match="grouped needs a group value per sample but digits has none"
    ):
        make_scenario("grouped", plain, plain, 2, 0, data_name="digits")
    train = _years(10, [1, 2])
    with pytest.raises(DataError, match="the test set of d has none"):
        make_scenario("grouped", train, plain, 2, 0, data_name="d")
    with pytest.raises(
        DataError, match=r"test set of d has groups \[3\] that its training set lacks"
    ):
        make_scenario("grouped", train, _years(6, [1, 3]), 2, 0, data_name="d")


# --------------------------------------------------------------------------- the group column


def test_dataset_group_travels_through_subset_and_concat() -> None:
    d = ArrayDataset(torch.zeros(4, 2), torch.arange(4), torch.tensor([7, 8, 9, 7]))
    assert torch.equal(d.subset(torch.tensor([3, 1])).group, torch.tensor([7, 8]))
    both = ArrayDataset.concat([d, d.subset(torch.tensor([2]))])
    assert torch.equal(both.group, torch.tensor([7, 8, 9, 7, 9]))
    assert (
        ArrayDataset.concat([d, ArrayDataset(torch.zeros(1, 2), torch.tensor([0]))]).group is None
    )
    assert ArrayDataset(torch.zeros(2, 1), torch.arange(2)).group is None
    with pytest.raises(DataError, match="one group value per sample"):
        ArrayDataset(torch.zeros(3, 2), torch.arange(3), torch.arange(2))


def test_load_data_group_column_and_npz(tmp_path: Path) -> None:
    csv = tmp_path / "t.csv"
    csv.write_text("a,year,label\n0.5,2020,1\n1.5,2019,0\n2.5,2020,1\n")
    d = load_data(csv, target="label", group_column="year")
    assert d.feature_shape == (1,) and d.group.dtype == torch.int64
    assert d.group.tolist() == [2020, 2019, 2020]
    assert load_data(csv, target="label").feature_shape == (2,)  # without it: a feature
    dates = tmp_path / "d.csv"
    dates.write_text("a,day,label\n1,2020-01-02,0\n2,2019-12-31,1\n")
    days = load_data(dates, target="label", group_column="day").group
    assert days.tolist() == [18263, 18261]  # days since 1970-01-01, chronological
    names = tmp_path / "n.csv"
    names.write_text("a,domain,label\n1,sketch,0\n")
    with pytest.raises(DataError, match="column 'domain' holds strings that are not ISO dates"):
        load_data(names, target="label", group_column="domain")
    with pytest.raises(DataError, match="has no group column 'yr'; available columns: a, year"):
        load_data(csv, target="label", group_column="yr")
    with pytest.raises(DataError, match="group_column='year' names a column and applies only"):
        load_data(np.zeros((2, 1)), np.zeros(2), group_column="year")
    npz = tmp_path / "g.npz"
    np.savez(npz, x=np.zeros((3, 2)), y=np.arange(3), group=np.array([1.5, 2.0, 1.5]))
    g = load_data(npz).group
    assert g.dtype == torch.float64 and g.tolist() == [1.5, 2.0, 1.5]
    np.savez(npz, x=np.zeros((3, 2)), y=np.arange(3))
    assert load_data(npz).group is None
    assert load_data({"x": np.zeros((2, 1)), "y": [0, 1], "group": [5, 6]}).group.tolist() == [5, 6]
