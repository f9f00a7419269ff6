import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from tokenizers import Tokenizer

from hpml_core import data
from hpml_core.batches import TokenBatches, TokenData
from hpml_core.contract.errors import UsageError
from hpml_core.contract.layout import Layout


def test_prepare_writes_tokens_that_decode_back_to_the_text(token_data, wikitext_valid):
    meta = json.loads((token_data / "meta.json").read_text())
    tokens = np.fromfile(token_data / "tokens.bin", dtype=meta["dtype"])
    assert meta["num_tokens"] == len(tokens) > 100_000
    assert meta["vocab_size"] == 512 and tokens.max() < 512
    tok = Tokenizer.from_file(str(token_data / "tokenizer.json"))
    text = wikitext_valid.read_text()
    decoded = tok.decode(tokens[:2000].tolist())
    assert text.startswith(decoded)
    assert len(decoded) > 2000


def test_parquet_and_text_files_give_the_same_tokens(tmp_path, token_data, wikitext_valid):
    lines = wikitext_valid.read_text().splitlines(keepends=True)[:300]
    (tmp_path / "part.txt").write_text("".join(lines))
    pq.write_table(pa.table({"body": lines}), tmp_path / "part.parquet")
    tokenizer = str(token_data)  # the folder prepared earlier holds a tokenizer.json
    for name, extra in [("txt", []), ("parquet", ["--text-column", "body"])]:
        assert data.main(["prepare", "--files", str(tmp_path / f"part.{name}"), "--tokenizer", tokenizer,
                          "--out", str(tmp_path / name), *extra]) == 0
    assert (tmp_path / "txt" / "tokens.bin").read_bytes() == (tmp_path / "parquet" / "tokens.bin").read_bytes()


def test_prepare_refuses_a_missing_file_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "hpml_core.data", "prepare", "--files", str(tmp_path / "nope.txt"),
                           "--tokenizer", "train", "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "--files" in proc.stderr and "nope.txt" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_missing_data_folder_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="--data"):
        TokenData.open(tmp_path)


def test_data_parallel_ranks_read_the_single_process_batch_between_them(token_data):
    tokens = TokenData.open(token_data)
    single = TokenBatches(tokens, seq_len=32, batch_size=4, layout=Layout(1, 1), dp_rank=0, seed=7)
    ranks = [TokenBatches(tokens, seq_len=32, batch_size=2, layout=Layout(2, 1), dp_rank=r, seed=7) for r in range(2)]
    for step in [0, 1, single.steps_per_epoch() + 3]:  # the last one is in the second epoch
        x, y = single.batch(step)
        shards = [b.batch(step) for b in ranks]
        torch.testing.assert_close(x, torch.cat([s[0] for s in shards]))
        torch.testing.assert_close(y, torch.cat([s[1] for s in shards]))


def test_batches_are_shifted_windows_in_a_seeded_order(token_data):
    tokens = TokenData.open(token_data)
    a = TokenBatches(tokens, seq_len=32, batch_size=4, layout=Layout(1, 1), dp_rank=0, seed=7)
    x, y = a.batch(5)
    assert x.shape == y.shape == (4, 32) and x.dtype == torch.int64
    torch.testing.assert_close(x[:, 1:], y[:, :-1])
    again = TokenBatches(tokens, seq_len=32, batch_size=4, layout=Layout(1, 1), dp_rank=0, seed=7)
    torch.testing.assert_close(again.batch(5)[0], x)
    other_seed = TokenBatches(tokens, seq_len=32, batch_size=4, layout=Layout(1, 1), dp_rank=0, seed=8)
    assert not torch.equal(other_seed.batch(5)[0], x)
    # one epoch visits every window exactly once
    seen = torch.cat([a.sample_ids(s) for s in range(a.steps_per_epoch())])
    assert len(set(seen.tolist())) == len(seen) == a.steps_per_epoch() * 4
