"""TRL-style reward functions f(prompts, completions, **columns), several at once with weights, beside the
toolkit's f(prompts, completions, records) (rlhf/reward_functions.py), and in the policy stage."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import pytest

from rlhf.config import ConfigError, load_config
from rlhf.reward_functions import RewardFunctionError, RewardFunctions, is_toolkit_form

ROOT = Path(__file__).resolve().parents[1]

MODULE = textwrap.dedent('''
    CALLS = []

    def trl_exact(prompts, completions, reference, **kwargs):
        CALLS.append({"prompts": prompts, "completions": completions, "reference": reference, **kwargs})
        return [1.0 if c[0]["content"].strip() == r else 0.0 for c, r in zip(completions, reference)]

    def named_only(completions, kind):  # no **kwargs: gets only what it names
        return [float(len(c[0]["content"])) if k == "arithmetic" else None for c, k in zip(completions, kind)]

    def toolkit_len(prompts, completions, records):
        return [float(len(c)) for c in completions]

    def text_form(prompts, completions, **kwargs):
        return [1.0 if isinstance(p, str) and isinstance(c, str) else -1.0 for p, c in zip(prompts, completions)]

    def too_few(prompts, completions, **kwargs):
        return [0.0]

    def e_count(prompts, completions, **kwargs):  # TRL form of the toy task's reward
        return [c[0]["content"].count("e") / max(len(c[0]["content"]), 1) for c in completions]
''')


@pytest.fixture
def mod(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib
    import sys

    sys.modules.pop("my_rewards", None)
    return importlib.import_module("my_rewards")


RECORDS = [
    {"id": "a", "kind": "arithmetic", "prompt": [{"role": "user", "content": "What is 1 + 1?"}], "reference": "2"},
    {"id": "b", "kind": "open", "prompt": [{"role": "user", "content": "Name a colour."}], "reference": "red"},
]


def batch():
    return [r["prompt"] for r in RECORDS], ["2", "blue!"], RECORDS


def test_trl_form_gets_messages_columns_and_ids(mod):
    fns = RewardFunctions.from_spec("my_rewards:trl_exact")
    scores = fns(*batch(), completion_ids=[[5], [6, 7]])
    assert scores.tolist() == [1.0, 0.0]
    call = mod.CALLS[-1]
    assert call["prompts"] == [r["prompt"] for r in RECORDS]
    assert call["completions"] == [[{"role": "assistant", "content": "2"}], [{"role": "assistant", "content": "blue!"}]]
    assert call["reference"] == ["2", "red"] and call["id"] == ["a", "b"] and call["kind"] == ["arithmetic", "open"]
    assert call["completion_ids"] == [[5], [6, 7]] and "prompt" not in call


def test_weighted_sum_of_both_forms_with_none_skipped_and_each_logged(mod):
    fns = RewardFunctions.from_spec("my_rewards:trl_exact,my_rewards:toolkit_len,my_rewards:named_only",
                                    [2.0, 0.5, -1.0])
    assert [is_toolkit_form(f) for f in fns.functions] == [False, True, False]
    scores = fns(*batch())
    # row a: 2*1 + 0.5*1 - 1*1 = 1.5; row b: 2*0 + 0.5*5 + (None: skipped) = 2.5
    assert scores.tolist() == [1.5, 2.5]
    stats = fns.stats()
    assert stats["rewards/trl_exact/mean"] == 0.5 and stats["rewards/toolkit_len/mean"] == 3.0
    assert stats["rewards/named_only/mean"] == 1.0 and stats["rewards/named_only/std"] == 0.0  # one valid value
    assert stats["rewards/toolkit_len/std"] == pytest.approx(math.sqrt(8.0))  # (1, 5): sample std
    assert stats["rewards/unscored_fraction"] == 0.0


def test_plain_text_prompts_give_text_completions(mod):
    fns = RewardFunctions.from_spec("my_rewards:text_form")
    assert fns(["say hi"], ["hi"], [{"prompt": "say hi"}]).tolist() == [1.0]


def test_bad_functions_and_weights_fail_clearly(mod):
    with pytest.raises(RewardFunctionError, match="returned 1 scores for 2 completions"):
        RewardFunctions.from_spec("my_rewards:too_few")(*batch())
    with pytest.raises(RewardFunctionError, match="2 values for 1 reward functions"):
        RewardFunctions.from_spec("my_rewards:trl_exact", [1.0, 2.0])
    with pytest.raises(RewardFunctionError, match="has no attribute 'nope'"):
        RewardFunctions.from_spec("my_rewards:nope")
    from rlhf.stages.policy import PolicyConfig

    with pytest.raises(ConfigError, match="reward_weights has 1 values for the 2 functions"):
        load_config(PolicyConfig, None, {"reward_fn": "a:b,c:d", "reward_weights": "1.0"})


def test_policy_stage_sums_weighted_trl_and_toolkit_functions_and_logs_each(mod, tmp_path):
    from rlhf.stages.policy import PolicyConfig, train

    cfg = load_config(PolicyConfig, ROOT / "configs/tiny/policy.yaml", {
        "output_dir": str(tmp_path / "run"), "prompts": str(ROOT / "reward_data/prompts_train.jsonl"),
        "reward_fn": "my_rewards:e_count,rlhf.tasks.rewards:letter_frequency", "reward_weights": "[0.25, 2.0]",
        "num_updates": "3", "max_new_tokens": "8"})
    train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "run/log.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and any(r["rewards/e_count/mean"] > 0 for r in rows)
    for r in rows:
        # the two functions compute the same thing, in TRL's form and the toolkit's
        assert r["rewards/e_count/mean"] == pytest.approx(r["rewards/letter_frequency/mean"], abs=1e-7)
        assert r["objective/scores"] == pytest.approx(
            0.25 * r["rewards/e_count/mean"] + 2.0 * r["rewards/letter_frequency/mean"], abs=1e-6)
