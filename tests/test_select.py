"""The select stage on bad input: a malformed keyword dictionary or labelled set, metadata that is missing or not text,
duplicated ids, an empty table, embeddings of the wrong size and a table that is not a classifier. The known answers
(keywords, the labelled set, the classifier, the corpus decisions, determinism) are in nbs/11_select."""
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from medgen.curate.select import (DEFAULT_EMBEDDING, KeywordMatcher, classifier_from_table, classifier_table, fit_text_classifier,
                                  load_embedder, load_keywords, load_labelled, score_videos, select_videos, text_scores)


@pytest.fixture(scope="module")
def matcher(root):
    return KeywordMatcher.from_file(root / "resources" / "medical_keywords.csv")


@pytest.fixture(scope="module")
def labelled(root):
    return load_labelled(root / "resources" / "metadata_labelled.csv")


@pytest.fixture(scope="module")
def embedder():
    return load_embedder(DEFAULT_EMBEDDING, "cpu")


@pytest.fixture(scope="module")
def fitted(labelled, embedder, matcher):
    "The stage's classifier, trained on the train split with the params.yaml defaults."
    table, _, _ = fit_text_classifier(labelled, embedder, DEFAULT_EMBEDDING, matcher)
    return classifier_from_table(table)


def test_dictionary_errors(tmp_path):
    (tmp_path / "dup.csv").write_text("category,term\nanatomy,lung\nimaging,Lung\n")
    with pytest.raises(ValueError, match="twice"):
        load_keywords(tmp_path / "dup.csv")
    (tmp_path / "cols.csv").write_text("kind,word\nanatomy,lung\n")
    with pytest.raises(ValueError, match="lacks columns"):
        load_keywords(tmp_path / "cols.csv")
    with pytest.raises(FileNotFoundError):
        load_keywords(tmp_path / "absent.csv")


def test_labelled_errors(tmp_path, labelled):
    bad = labelled.head(4).assign(label=[0, 1, 2, 1])
    bad.to_csv(tmp_path / "l.csv", index=False)
    with pytest.raises(ValueError, match="label must be 0 or 1"):
        load_labelled(tmp_path / "l.csv")
    labelled.head(4).drop(columns="split").to_csv(tmp_path / "s.csv", index=False)
    with pytest.raises(ValueError, match=r"lacks columns \['split'\]"):
        load_labelled(tmp_path / "s.csv")


def test_classifier_table_errors():
    rng = np.random.default_rng(0)
    clf = LogisticRegression().fit(rng.normal(size=(20, 384)), np.r_[[0] * 10, [1] * 10])
    with pytest.raises(ValueError, match="expects 384"):  # embeddings of another backend
        text_scores(clf, np.zeros((1, 768), np.float32))
    with pytest.raises(ValueError, match="not a classifier table"):
        classifier_from_table(classifier_table(clf, "x").iloc[:10])


def test_bad_metadata(matcher, embedder, fitted):
    clf, backend = fitted
    odd = pd.DataFrame(dict(video_id=["blank", "nan", "none", "ok"], title=["", np.nan, None, "Colonoscopy with polyp removal"],
                            description=["   ", np.nan, pd.NA, 123]))  # a number where text should be
    scores = score_videos(odd, matcher, embedder, clf, backend, progress=False)
    kept, decided, rows = select_videos(odd, scores)
    assert list(kept.video_id) == ["ok"]
    assert {r["video_id"]: r["reason"] for r in rows} == {"blank": "no_metadata", "nan": "no_metadata", "none": "no_metadata"}
    assert np.isnan(decided.set_index("video_id").loc["blank", "text_score"])
    assert "none (empty title and description)" in {r["video_id"]: r["detail"] for r in rows}["none"]
    with pytest.raises(ValueError, match=r"lacks columns \['title'\]"):
        score_videos(odd.drop(columns="title"), matcher, embedder, clf, backend)
    with pytest.raises(ValueError, match="duplicated video ids"):
        score_videos(pd.concat([odd, odd.tail(1)]), matcher, embedder, clf, backend)
    with pytest.raises(ValueError, match="unknown select rule"):
        select_videos(odd, scores, rule="vote")
    empty = odd.iloc[:0]
    kept, decided, rows = select_videos(empty, score_videos(empty, matcher, embedder, clf, backend, progress=False))
    assert len(kept) == len(decided) == len(rows) == 0
