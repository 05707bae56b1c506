"""Reference metrics computed without a download, against values worked out by hand."""

import pytest

from rlhf.text_metrics import builtin_metric, contains_reference, exact_match, normalize_answer, token_f1


def test_normalisation_follows_squad():
    assert normalize_answer("  The Answer, is: 93! ") == ["answer", "is", "93"]


def test_exact_match_is_over_normalised_text_and_aliases():
    assert exact_match("93.", ["93"]) == 1.0
    assert exact_match("It is 93", ["93"]) == 0.0
    assert exact_match("Kiev", ["Kyiv", "Kiev"]) == 1.0


def test_token_f1_by_hand():
    # prediction tokens [28, 65, 93], answer [93]: precision 1/3, recall 1, F1 = 2 * (1/3) / (4/3) = 0.5
    assert token_f1("28 + 65 = 93.", ["93"]) == pytest.approx(0.5)
    assert token_f1("nothing", ["93"]) == 0.0
    # the best alias counts: [paris] vs [paris, france] -> P 1, R 1/2, F1 2/3
    assert token_f1("Paris", ["Paris, France", "Lyon"]) == pytest.approx(2 / 3)


def test_contains_reference_needs_whole_tokens():
    assert contains_reference("28 + 65 = 93.", ["93"]) == 1.0
    assert contains_reference("28 + 65 = 193.", ["93"]) == 0.0
    assert contains_reference("It is New York City", ["new york"]) == 1.0


def test_builtin_metric_is_the_mean_and_checks_lengths():
    assert builtin_metric("contains_reference", ["93", "12"], [["93"], ["13"]]) == 0.5
    with pytest.raises(ValueError):
        builtin_metric("exact_match", ["a"], [])
