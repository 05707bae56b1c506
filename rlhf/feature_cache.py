"""Frozen means cached: features of a frozen backbone, computed once per unique text (one entry per text
holding every feature read from its one backbone pass: the chosen layers' pooled states, log-prob statistics).

Features live under `$RLHF_CACHE/features/<backbone hash>-<dtype>-L<max_length>-v<format>-<features>/`, keyed
by the SHA-256 of the rendered text (and where its response starts), so they are reused across epochs, runs
and sweeps, and a different backbone, precision, length limit, feature set or text is a miss. Each extraction
appends a shard (`shard-*.safetensors` with its keys in `shard-*.json`, written atomically), so concurrent
processes never write the same file. `spec.json` names a directory's features, so that a run reading a subset
of them takes them from there (`rlhf.stages.reward.reuse_superset_features`) instead of running the backbone.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path

import torch

FORMAT = 2  # bump when the pooling or rendering changes


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()  # a lone surrogate is text too


class FeatureCache:
    def __init__(self, root: str | Path, backbone_id: str, dtype: torch.dtype, max_length: int, variant: str = ""):
        tag = backbone_id.replace(":", "-").replace("/", "_")
        self.dir = Path(root) / (f"{tag}-{str(dtype).removeprefix('torch.')}-L{max_length}-v{FORMAT}"
                                 + (f"-{variant}" if variant else ""))
        self.variant = variant
        self.index: dict[str, tuple[str, int]] = {}
        self._shards: dict[str, torch.Tensor] = {}
        self.reload()

    @classmethod
    def at(cls, directory: Path) -> "FeatureCache":
        """The cache in an existing directory (a sibling found by `siblings`)."""
        cache = cls.__new__(cls)
        cache.dir, cache.variant, cache.index, cache._shards = Path(directory), "", {}, {}
        cache.reload()
        return cache

    def siblings(self) -> list[Path]:
        """Other feature variants of the same backbone, precision, length limit and format."""
        if not self.variant:
            return []
        base = self.dir.name.removesuffix(f"-{self.variant}")
        return sorted(d for d in self.dir.parent.glob(f"{base}-*") if d.is_dir() and d != self.dir)

    def reload(self) -> None:
        """(Re)read the keys of every complete shard."""
        self.index.clear()
        for keys_file in sorted(self.dir.glob("shard-*.json")):
            for row, key in enumerate(json.loads(keys_file.read_text())):
                self.index[key] = (keys_file.stem, row)

    def missing(self, keys: list[str]) -> list[str]:
        """Keys not cached, first occurrences only, in order."""
        seen, out = set(), []
        for k in keys:
            if k not in self.index and k not in seen:
                seen.add(k)
                out.append(k)
        return out

    def put(self, keys: list[str], features: torch.Tensor) -> None:
        """Append a shard of features [N, H] for `keys` (the keys file last, so a shard is all or nothing)."""
        from safetensors.torch import save_file

        if not keys:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"shard-{uuid.uuid4().hex[:12]}"
        tmp = self.dir / f"{name}.safetensors.tmp"
        save_file({"features": features.detach().cpu().contiguous()}, tmp)
        os.replace(tmp, self.dir / f"{name}.safetensors")
        (self.dir / f"{name}.json.tmp").write_text(json.dumps(keys))
        os.replace(self.dir / f"{name}.json.tmp", self.dir / f"{name}.json")
        for row, key in enumerate(keys):
            self.index[key] = (name, row)

    def get(self, keys: list[str]) -> torch.Tensor:
        """Features [N, H] of cached keys, in order."""
        from safetensors.torch import load_file

        rows = []
        for k in keys:
            shard, row = self.index[k]
            if shard not in self._shards:
                self._shards[shard] = load_file(self.dir / f"{shard}.safetensors")["features"]
            rows.append(self._shards[shard][row])
        return torch.stack(rows)
