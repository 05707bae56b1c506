"""The pipeline's stages; each module has a config dataclass, a `train`/`run` function and `main(argv)`."""
