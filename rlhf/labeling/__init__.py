"""Labelling candidates into preferences: a person in a terminal or a browser, a simulated annotator, or a
reward model; all write the same append-only `DecisionStore`."""
