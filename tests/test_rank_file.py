import json

import pytest

from analysis.sample_rank_files import rank_file as sample
from hpml_core.contract import rank_file, run_states
from hpml_core.contract.atomic import atomic_write
from hpml_core.contract.status_file import STATUS_FILE, read_status
from jobs.observe import progress


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


OLD_WORDS = [("completed", "COMPLETED"), ("failed", "FAILED"), ("oom", "OUT_OF_MEMORY"), ("stopped", "STOPPED")]


@pytest.mark.parametrize("old,new", OLD_WORDS)
def test_a_rank_file_of_schema_1_is_read_in_the_run_states_words(tmp_path, old, new):
    """Schema 1 (an engine from before) wrote the status lower-case, and "oom": still read."""
    path = tmp_path / "rank-0.json"
    record = sample(run="old", rank=0, mode="single", world=1, tp=1, batch=8)
    path.write_text(json.dumps({**record.model_dump(mode="json"), "schema_version": 1, "status": old}))
    read = rank_file.read(path)
    assert (read.schema_version, read.status) == (1, new)
    assert run_states.from_rank_files({0: read.status}, 1)[0] == new


def test_the_engine_writes_schema_2_in_the_run_states_words():
    record = sample(run="new", rank=0, mode="single", world=1, tp=1, batch=8)
    assert (record.schema_version, record.status) == (2, "COMPLETED")
    with pytest.raises(ValueError):
        rank_file.RankFile.model_validate({**record.model_dump(mode="json"), "status": "done"})


@pytest.mark.parametrize("old,new", [("starting", "STARTING"), ("running", "RUNNING"), *OLD_WORDS])
def test_an_old_status_file_is_read_in_the_run_states_words(tmp_path, old, new):
    (tmp_path / STATUS_FILE).write_text(json.dumps({"state": old, "attempt": 1, "step": 3, "total_steps": 10,
                                                    "error": None, "started_at": 0, "updated_at": 1}))
    assert read_status(tmp_path)["state"] == new


def test_a_status_file_with_a_word_the_engine_never_wrote_counts_as_none(tmp_path):
    (tmp_path / STATUS_FILE).write_text(json.dumps({"state": "sleeping", "step": 3, "total_steps": 10,
                                                    "started_at": 0, "updated_at": 1}))
    assert read_status(tmp_path) is None


@pytest.mark.parametrize("state,shown", [("RUNNING", "running, step 3/10"), ("STOPPED", "stopped, step 3/10"),
                                         ("OUT_OF_MEMORY", "out of memory, step 3/10")])
def test_hpml_status_shows_the_engine_s_word_as_prose(state, shown):
    own = {"state": state, "step": 3, "total_steps": 10}
    assert progress(own, state) == shown  # a run state of the same word
