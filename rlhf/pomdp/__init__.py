"""POMDP baselines: partially observable environments (`envs`), memoryless, windowed and recurrent agents
(`agents`), the two-door model comparison (`models`) and the `rlhf pomdp` command (`train`)."""
