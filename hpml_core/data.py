"""Token data, prepared once on a login node (``hpml data prepare``): a corpus (a hub dataset
through ``datasets``, or local text or parquet files) tokenized into ``tokens.bin``, a flat
array of token ids, plus ``meta.json`` and the tokenizer used. Jobs memory-map ``tokens.bin``
(``hpml_core.batches``): no tokenizing and no network inside a job. Needs ``tokenizers``, and
``datasets`` for the hub and parquet (``pip install 'hpml[data]'``), not torch.

Usage::

    python -m hpml_core.data prepare --files ../shared/data/wikitext-2/valid.txt \\
        --tokenizer train --vocab-size 4096 --out results/data/wikitext-2
    python -m hpml_core.data prepare --hub Salesforce/wikitext --hub-config wikitext-103-raw-v1 \\
        --tokenizer gpt2 --out /scratch/$USER/data/wikitext-103
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np

from hpml_core.contract.atomic import atomic_write, atomic_write_json
from hpml_core.contract.data_meta import FORMAT_VERSION, META_FILE, TOKENIZER_FILE, TOKENS_FILE
from hpml_core.contract.errors import EXIT_USAGE, UsageError

if TYPE_CHECKING:
    from tokenizers import Tokenizer


def _read_text_files(files: list[str]) -> list[str]:
    """The rows ``datasets``' text loader makes with ``keep_linebreaks=True`` (each line with its
    line break, universal newlines, ``str.splitlines``), read without it: local text needs no
    ``datasets``, so a GPU node or a bare venv can prepare it."""
    rows: list[str] = []
    for file in files:
        rows.extend(Path(file).read_text(encoding="utf-8").splitlines(keepends=True))
    return rows


def _load_texts(args: argparse.Namespace) -> Callable[[], Iterator[list[str]]]:
    """The corpus's text column, as a function giving its rows in batches of 1,000 (it is read
    twice: to train a tokenizer, then to tokenize). Hub and parquet go through ``datasets``."""
    if not args.hub:
        missing = [str(f) for f in args.files if not Path(f).is_file()]
        if missing:
            raise UsageError("--files", f"no such file: {missing[0]}")
        suffixes = {Path(f).suffix for f in args.files}
        if suffixes - {".txt", ".parquet"} or len(suffixes) > 1:
            raise UsageError("--files", f"all files must be .txt or all .parquet (got {sorted(suffixes)})")
        if suffixes == {".txt"}:
            if args.text_column != "text":
                raise UsageError("--text-column", f"{args.text_column!r} is not a column (columns: ['text'])")
            rows = _read_text_files(args.files)
            return lambda: (rows[i:i + 1000] for i in range(0, len(rows), 1000))
    from datasets import load_dataset

    if args.hub:
        try:
            ds = load_dataset(args.hub, args.hub_config, split=args.split)
        except Exception as exc:  # the hub is unreachable or the name is wrong
            raise UsageError("--hub", f"cannot load {args.hub!r} ({type(exc).__name__}: {exc}); "
                             "prepare from local --files instead when offline") from None
    else:
        ds = load_dataset("parquet", data_files=[str(f) for f in args.files], split="train")
    if args.text_column not in ds.column_names:
        raise UsageError("--text-column", f"{args.text_column!r} is not a column (columns: {ds.column_names})")
    return lambda: (batch[args.text_column] for batch in ds.iter(batch_size=1000))


def _tokenizer(args: argparse.Namespace, batches: Callable[[], Iterator[list[str]]]) -> tuple[Tokenizer, dict]:
    """GPT-2's tokenizer by hub name, one from a local folder, or a byte-level BPE trained on the corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    spec = args.tokenizer
    if spec == "train":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=args.vocab_size,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            special_tokens=["<|endoftext|>"],
        )
        tok.train_from_iterator(batches(), trainer)
        return tok, {"source": "trained", "vocab_size_requested": args.vocab_size}
    if Path(spec).is_dir():
        file = Path(spec) / TOKENIZER_FILE
        if not file.is_file():
            raise UsageError("--tokenizer", f"folder {spec} has no {TOKENIZER_FILE}")
        return Tokenizer.from_file(str(file)), {"source": "folder", "path": str(Path(spec).resolve())}
    try:
        return Tokenizer.from_pretrained(spec), {"source": "hub", "name": spec}
    except Exception as exc:
        raise UsageError("--tokenizer", f"cannot load {spec!r} from the hub ({type(exc).__name__}); "
                         "offline, pass a local tokenizer folder or 'train'") from None


def prepare(args: argparse.Namespace) -> Path:
    out = Path(args.out)
    started = time.time()
    batches = _load_texts(args)
    tok, tok_info = _tokenizer(args, batches)
    vocab_size = tok.get_vocab_size()
    dtype = np.uint16 if vocab_size <= 2**16 else np.uint32

    chunks = []
    for batch in batches():
        for enc in tok.encode_batch(batch):
            chunks.append(np.asarray(enc.ids, dtype=dtype))
    tokens = np.concatenate(chunks) if chunks else np.zeros(0, dtype=dtype)
    if len(tokens) < 2:
        raise UsageError("--files" if not args.hub else "--hub", "the corpus has no text to tokenize")

    # meta.json is written last: its presence means tokens.bin and tokenizer.json are complete.
    (out / META_FILE).unlink(missing_ok=True)
    atomic_write(out / TOKENS_FILE, lambda f: f.write(tokens.tobytes()))
    atomic_write(out / TOKENIZER_FILE, lambda f: f.write(tok.to_str().encode()))
    atomic_write_json(out / META_FILE, {
        "format_version": FORMAT_VERSION,
        "num_tokens": int(len(tokens)),
        "dtype": np.dtype(dtype).name,
        "vocab_size": vocab_size,
        "tokenizer": tok_info,
        "source": {"hub": args.hub, "hub_config": args.hub_config, "split": args.split} if args.hub
        else {"files": [str(Path(f).resolve()) for f in args.files]},
        "text_column": args.text_column,
        "prepared_in_s": round(time.time() - started, 2),
    })
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hpml data", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="tokenize a corpus into a token file for training")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--hub", help="dataset name on the Hugging Face hub, e.g. Salesforce/wikitext")
    src.add_argument("--files", nargs="+", type=Path, help="local .txt files (one line a row) or .parquet files")
    p.add_argument("--hub-config", help="hub dataset configuration, e.g. wikitext-103-raw-v1")
    p.add_argument("--split", default="train", help="hub split (default train)")
    p.add_argument("--text-column", default="text")
    p.add_argument("--tokenizer", default="gpt2", help="hub name (default gpt2), a local folder with tokenizer.json, or 'train'")
    p.add_argument("--vocab-size", type=int, default=50257, help="with --tokenizer train (default 50257, GPT-2's)")
    p.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    try:
        out = prepare(args)
    except UsageError as exc:
        print(f"hpml data: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    meta = json.loads((out / META_FILE).read_text())
    print(f"wrote {meta['num_tokens']:,} tokens (vocab {meta['vocab_size']:,}) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
