"""Decision Transformer: offline RL as sequence modelling over (return-to-go, observation, action) tokens.

    rlhf/dt/sequences.py   context windows: left padding, masks, timestep indices (pure functions)
    rlhf/dt/data.py        tasks, scripted behaviour policies, mixed-quality data sets, `rlhf dt data`
    rlhf/dt/model.py       the policy: transformers' DecisionTransformerModel + discrete actions, normalisation
    rlhf/dt/train.py       `rlhf dt train`: DT, BC and filtered BC in the same network
    rlhf/dt/evaluate.py    `rlhf dt evaluate`: roll-outs conditioned on target returns
    rlhf/dt/cli.py         the `rlhf dt <command>` table (rlhf/subcommands.py dispatches it)

Return-to-go and the action loss are in rlhf/losses.py (`returns_to_go`, `dt_action_loss`).
"""
