import json

import pytest

from hpml_core.contract import rank_file
from hpml_core.contract.atomic import atomic_write


def test_committed_json_schema_matches_the_typed_model():
    assert json.loads(rank_file.SCHEMA_PATH.read_text()) == rank_file.json_schema(), \
        "regenerate it: python -m hpml_core.contract.rank_file (make schema)"


def test_an_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "rank-0.json"
    path.write_text('{"old": true}')

    def write_then_die(f):
        f.write(b'{"new": tr')
        raise KeyboardInterrupt  # e.g. the job is killed mid-write

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, write_then_die)
    assert path.read_text() == '{"old": true}'
    assert [p.name for p in tmp_path.iterdir()] == ["rank-0.json"]
