import numpy as np
from sklearn.metrics import cohen_kappa_score

from fundus_tl.metrics import grades_from_scores, grading_report, quadratic_kappa


def test_quadratic_kappa_matches_sklearn_and_hand_computed_case():
    actual = np.array([0, 1, 2, 3, 4, 0, 1, 2])
    predicted = np.array([0, 2, 2, 3, 3, 0, 0, 2])
    expected = cohen_kappa_score(actual, predicted, weights="quadratic", labels=range(5))
    assert quadratic_kappa(actual, predicted, 5) == expected
    assert quadratic_kappa(actual, actual, 5) == 1.0
    # Two grades only, one swap: observed disagreement 2 of 4 pairs at squared distance 1.
    assert quadratic_kappa(np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1]), 2) == 0.0


def test_regression_scores_round_then_clip_like_the_seed():
    scores = np.array([-0.7, 0.49, 0.51, 2.5, 3.6, 7.2])
    assert grades_from_scores(scores, 5).tolist() == [0, 0, 1, 2, 4, 4]


def test_grading_report_confusion_matrix_rows_are_actual_grades():
    report = grading_report(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 2]), 3)
    assert report["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    assert report["accuracy"] == 0.75
    assert report["n"] == 4


def test_threshold_search_improves_qwk_on_compressed_scores():
    from fundus_tl.metrics import grades_from_thresholds, optimise_thresholds

    rng = np.random.default_rng(0)
    actual = rng.integers(0, 5, 400)
    scores = 0.55 * actual + rng.normal(0, 0.25, 400)  # a regressor that shrinks towards 0
    rounded = quadratic_kappa(actual, grades_from_scores(scores, 5), 5)
    thresholds = optimise_thresholds(scores, actual, 5)
    tuned = quadratic_kappa(actual, grades_from_thresholds(scores, thresholds), 5)
    assert tuned > rounded + 0.05
    assert thresholds == sorted(thresholds) and thresholds[-1] < 3.5
    assert grades_from_thresholds(np.array([0.2, 0.5, 1.7, 9.0]), [0.5, 1.5, 2.5, 3.5]).tolist() == [0, 1, 2, 4]


def test_per_class_precision_recall_and_row_normalised_matrix():
    report = grading_report(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), 2)
    assert report["per_class"][1] == {"grade": 1, "precision": 2 / 3, "recall": 1.0, "support": 2}
    assert report["confusion_matrix_normalised"] == [[0.5, 0.5], [0.0, 1.0]]


def test_thresholds_stay_inside_the_scores_and_never_collapse_to_one_grade():
    from fundus_tl.metrics import default_thresholds, grades_from_thresholds, optimise_thresholds

    actual = np.array([0, 0, 0, 1, 1, 1])
    assert optimise_thresholds(np.full(6, 0.13), actual, 2) == default_thresholds(2)  # a constant model
    scores = np.array([0.6, 0.7, 0.55, 0.3, 0.4, 0.1])  # a bad model: rounding scores QWK < 0, one grade scores 0
    thresholds = optimise_thresholds(scores, actual, 2)
    assert scores.min() < thresholds[0] < scores.max()
    assert len(set(grades_from_thresholds(scores, thresholds).tolist())) == 2
