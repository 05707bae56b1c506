"""rlhf: a small, readable RLHF toolkit."""
