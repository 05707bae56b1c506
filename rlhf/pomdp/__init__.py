"""POMDP baselines: partially observable environments (`envs`), memoryless, windowed and recurrent agents
(`agents`), the two-door model comparison (`models`), training and evaluation (`train`) and the `rlhf pomdp`
commands (`cli`)."""
