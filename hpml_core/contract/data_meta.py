"""What a prepared data folder says about itself (``meta.json``, written last by ``hpml data
prepare``): how many tokens, of which vocabulary, stored how. Read by the engine before it
memory-maps the tokens, and by ``hpml plan`` to check a study against the real data (its
vocabulary, its size) without loading it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from hpml_core.contract.errors import UsageError

FORMAT_VERSION = 1
TOKENS_FILE = "tokens.bin"
META_FILE = "meta.json"
TOKENIZER_FILE = "tokenizer.json"
ITEM_SIZES = {"uint16": 2, "uint32": 4}
# What makes two prepared folders the same data (a checkpoint is refused on other data): not
# where the folder now lives, nor when or how fast it was prepared.
IDENTITY_FIELDS = ("num_tokens", "vocab_size", "dtype", "tokenizer", "source")


@dataclass(frozen=True)
class DataMeta:
    path: Path
    num_tokens: int
    vocab_size: int
    dtype: str
    identity: dict = field(default_factory=dict, hash=False, repr=False)  # IDENTITY_FIELDS of meta.json

    def num_samples(self, seq_len: int) -> int:
        """Non-overlapping windows of seq_len + 1 tokens (inputs and shifted targets)."""
        return (self.num_tokens - 1) // seq_len

    @classmethod
    def exists(cls, path: Path) -> bool:
        return (path / META_FILE).is_file()

    @classmethod
    def read(cls, path: Path) -> "DataMeta":
        """The folder's description, checked against the size of its token file."""
        meta_path = path / META_FILE
        if not meta_path.is_file():
            raise UsageError("--data", f"{meta_path} does not exist; make it with `hpml data prepare`")
        try:
            meta = json.loads(meta_path.read_text())
            found = cls(path=path, num_tokens=int(meta["num_tokens"]), vocab_size=int(meta["vocab_size"]),
                        dtype=str(meta["dtype"]), identity={k: meta.get(k) for k in IDENTITY_FIELDS})
            size = (path / TOKENS_FILE).stat().st_size
            version = meta.get("format_version")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UsageError("--data", f"{path} is not a readable prepared data folder ({exc})") from None
        if version != FORMAT_VERSION or found.dtype not in ITEM_SIZES \
                or size != found.num_tokens * ITEM_SIZES[found.dtype]:
            raise UsageError("--data", f"{path / TOKENS_FILE} does not match {META_FILE}; prepare it again")
        return found
